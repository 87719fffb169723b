//! Shared set-up for the benches: a config with many stacks and stored tokens.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use stackgate::config::{self, Config};
use stackgate::token::{hash_secret, Acl, Origin, RateLimit, ScopeEntry, TokenRecord};

/// The secret of token `i` (`cs` + 32 hex).
pub fn secret(i: usize) -> String {
    format!("cs{i:032x}")
}

pub fn api_key(s: usize) -> String {
    format!("blt{s:016x}")
}

/// A config of `stacks` stacks in one organisation with generous limits.
pub fn config(stacks: usize) -> Config {
    let mut text = String::from(
        "[upstream]\nurl = \"http://127.0.0.1:9\"\n[[organizations]]\nuid = \"o\"\nread_per_second = 1000000\nwrite_per_second = 1000000\nburst = 100000\nmax_tokens_per_stack = 10000\n",
    );
    for s in 0..stacks {
        text.push_str(&format!(
            "[[stacks]]\napi_key = \"{}\"\norganization = \"o\"\nbranches = [\"main\", \"development\"]\naliases = {{ deploy = \"main\" }}\n",
            api_key(s)
        ));
    }
    config::from_str(&text).unwrap()
}

/// `n` stored tokens spread over `stacks` stacks; `custom` gives each its own buckets.
pub fn tokens(n: usize, stacks: usize, custom: bool) -> Vec<TokenRecord> {
    (0..n).map(|i| token(i, i % stacks, custom)).collect()
}

/// Read-write token `i` (secret [`secret`]`(i)`) of stack `stack` (api key [`api_key`]).
pub fn token(i: usize, stack: usize, custom: bool) -> TokenRecord {
    TokenRecord {
        uid: format!("blt{i:016x}"),
        stack: api_key(stack),
        name: format!("token {i}"),
        description: String::new(),
        secret_sha256: hash_secret(secret(i).as_bytes()),
        scope: vec![
            ScopeEntry {
                module: "$all".into(),
                acl: Acl { read: true, write: true },
                branches: None,
                branch_aliases: None,
            },
            ScopeEntry {
                module: "branch".into(),
                acl: Acl { read: true, write: false },
                branches: Some(vec!["main".into()]),
                branch_aliases: None,
            },
        ]
        .into(),
        expires_on: None,
        is_email_notification_enabled: false,
        rate_limit: custom.then_some(RateLimit { read_per_second: 500_000, write_per_second: 500_000 }),
        created_by: "bench".into(),
        updated_by: "bench".into(),
        created_at: String::new(),
        updated_at: String::new(),
        expiry_notified_at: None,
        enabled: true,
        previous_secret: None,
        origin: Origin::Store,
    }
}

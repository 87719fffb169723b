//! Writes a benchmark config and a token store with many tokens.
//!
//!     cargo run --release --example seed_store -- DIR STACKS TOKENS_PER_STACK BACKEND_ADDR LISTEN
//!
//! Creates DIR/stackgate.toml (one organisation with limits far above any load test,
//! STACKS stacks) and DIR/tokens.db (STACKS x TOKENS_PER_STACK read-write tokens; the
//! secret of token i is `cs` + i as 32 hex digits). Used by benches/load.py.

use stackgate::store::sqlite::SqliteStore;
use stackgate::token::{hash_secret, Acl, Origin, ScopeEntry, TokenRecord};
use std::fmt::Write as _;
use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, dir, stacks, per_stack, backend, listen] = args.as_slice() else {
        anyhow::bail!("usage: seed_store DIR STACKS TOKENS_PER_STACK BACKEND_ADDR LISTEN");
    };
    let (dir, stacks, per_stack): (PathBuf, usize, usize) = (dir.into(), stacks.parse()?, per_stack.parse()?);
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("tokens.db");
    let _ = std::fs::remove_file(&db);
    let mut toml = format!(
        "[server]\nlisten = \"{listen}\"\nmax_connections = 100000\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[upstream]\nurl = \"http://{backend}\"\n\n[store]\npath = \"{}\"\n\n[guard]\nmax_failures = 0\n\n[[organizations]]\nuid = \"bench\"\nread_per_second = 1000000\nwrite_per_second = 1000000\nburst = 100000\nmax_tokens_per_stack = {}\n",
        db.display(),
        per_stack.max(1)
    );
    for s in 0..stacks {
        let _ = write!(toml, "\n[[stacks]]\napi_key = \"blt{s:016x}\"\norganization = \"bench\"\n");
    }
    std::fs::write(dir.join("stackgate.toml"), toml)?;
    let store = SqliteStore::open(&db)?;
    let scope = vec![
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
    ];
    let mut batch = Vec::with_capacity(100_000);
    for i in 0..stacks * per_stack {
        batch.push(TokenRecord {
            uid: format!("blt{i:016x}"),
            stack: format!("blt{:016x}", i / per_stack),
            name: format!("bench {i}"),
            description: String::new(),
            secret_sha256: hash_secret(format!("cs{i:032x}").as_bytes()),
            scope: scope.clone(),
            expires_on: None,
            is_email_notification_enabled: false,
            rate_limit: None,
            created_by: "bench".into(),
            updated_by: "bench".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            expiry_notified_at: None,
            origin: Origin::Store,
        });
        if batch.len() == batch.capacity() {
            store.import(&batch)?;
            batch.clear();
        }
    }
    store.import(&batch)?;
    println!("{} tokens over {stacks} stacks in {}", stacks * per_stack, db.display());
    Ok(())
}

//! Writes a benchmark config and a token store with many tokens.
//!
//!     cargo run --release --example seed_store -- DIR STACKS TOKENS_PER_STACK BACKEND_ADDR LISTEN
//!
//! Creates DIR/stackgate.toml (one organisation with limits far above any load test,
//! STACKS stacks) and DIR/tokens.db (STACKS x TOKENS_PER_STACK read-write tokens; the
//! secret of token i is `cs` + i as 32 hex digits). Used by benches/load.py.

#[path = "../benches/support.rs"]
mod support;

use stackgate::store::sqlite::SqliteStore;
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
    let mut batch = Vec::with_capacity(100_000);
    for i in 0..stacks * per_stack {
        batch.push(support::token(i, i / per_stack, false));
        if batch.len() == batch.capacity() {
            store.import(&batch)?;
            batch.clear();
        }
    }
    store.import(&batch)?;
    println!("{} tokens over {stacks} stacks in {}", stacks * per_stack, db.display());
    Ok(())
}

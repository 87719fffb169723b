//! Tests of `sqlite`.

use super::*;
use crate::error::FieldErrors;
use crate::token::{hash_secret, parse_expiry, Acl, Origin, RateLimit, ScopeEntry};
use std::collections::HashSet;

fn rec(uid: &str, stack: &str, name: &str) -> TokenRecord {
    TokenRecord {
        uid: uid.into(),
        stack: stack.into(),
        name: name.into(),
        description: String::new(),
        secret_sha256: hash_secret(uid.as_bytes()),
        scope: scope("$all", false),
        expires_on: Some(parse_expiry("2030-01-01").unwrap()),
        is_email_notification_enabled: true,
        rate_limit: Some(RateLimit { read_per_second: 3, write_per_second: 2 }),
        created_by: "alice".into(),
        updated_by: "alice".into(),
        created_at: "2026-01-01T00:00:00Z".into(),
        updated_at: "2026-01-01T00:00:00Z".into(),
        expiry_notified_at: None,
        enabled: true,
        previous_secret: None,
        origin: Origin::Store,
    }
}

fn scope(module: &str, write: bool) -> std::sync::Arc<[ScopeEntry]> {
    vec![ScopeEntry { module: module.into(), acl: Acl { read: true, write }, branches: None, branch_aliases: None }]
        .into()
}

/// A load parses each stored scope text once: the records that store the same scope
/// share one copy of its entries, and every record gets the scope it was stored with,
/// also when more distinct scopes come than the memo keeps. A row whose scope no longer
/// parses is left out, and only that row.
#[tokio::test]
async fn a_load_parses_each_distinct_scope_once() {
    let s = SqliteStore::in_memory().unwrap();
    let stored: Vec<TokenRecord> = (0..900)
        .map(|i| {
            let scope = match i % 3 {
                0 => scope("$all", false),
                1 => scope("entry", true),
                _ => scope(&format!("module{i}"), false),
            };
            TokenRecord { scope, ..rec(&format!("t{i}"), "k", &format!("n{i}")) }
        })
        .collect();
    assert_eq!(s.import(&stored).unwrap(), 900);
    // One row's scope no longer parses: that row alone is left out.
    let broken = |c: &mut Connection| c.execute("UPDATE tokens SET scope = '[{' WHERE uid = 't3'", []);
    assert_eq!(s.with(move |c| broken(c).map_err(|e| unavailable(&e))).await.unwrap(), 1);
    let loaded = crate::store::load_matching(&s, |_| true).await.unwrap();
    assert_eq!(loaded.len(), 899);
    let by_uid: HashMap<&str, &TokenRecord> = loaded.iter().map(|r| (r.uid.as_str(), r)).collect();
    for want in stored.iter().filter(|r| r.uid != "t3") {
        assert_eq!(by_uid[want.uid.as_str()].scope, want.scope, "{}", want.uid);
    }
    // 300 distinct texts pass the memo's bound once, so a common scope has two copies
    // at most: the one from before the memo started over and the one after.
    for module in ["$all", "entry"] {
        let copies: HashSet<*const ScopeEntry> =
            loaded.iter().filter(|r| r.scope[0].module == module).map(|r| r.scope.as_ptr()).collect();
        assert!(copies.len() <= 2, "{module}: {} copies for 300 records", copies.len());
    }
}

/// The audit row is written in the change's transaction: every committed change has
/// one, and a refused change (name clash, cap, invalid edit, unknown token) none.
#[tokio::test]
async fn audit_rows_come_with_committed_changes_only() {
    let s = SqliteStore::in_memory().unwrap();
    let cap = Cap { max: 2, static_count: 0 };
    s.create(&rec("a", "k", "one"), cap.clone()).await.unwrap();
    assert_eq!(s.create(&rec("b", "k", "one"), cap.clone()).await, Err(StoreError::DuplicateName));
    s.create(&rec("b", "k", "two"), cap.clone()).await.unwrap();
    assert_eq!(s.create(&rec("c", "k", "three"), cap.clone()).await, Err(StoreError::CapReached { max: 2 }));
    let rename = |r: TokenRecord| Ok(TokenRecord { name: "two".into(), updated_by: "carol".into(), ..r });
    assert_eq!(s.modify("k", "a", Box::new(rename)).await, Err(StoreError::DuplicateName));
    let refused = FieldErrors::from([("name".to_owned(), vec!["no.".to_owned()])]);
    assert!(s.modify("k", "a", Box::new(move |_| Err(refused))).await.is_err());
    assert_eq!(s.modify("k", "zz", Box::new(Ok)).await, Err(StoreError::NotFound));
    let describe = |r: TokenRecord| Ok(TokenRecord { description: "d".into(), updated_by: "carol".into(), ..r });
    s.modify("k", "a", Box::new(describe)).await.unwrap();
    s.delete("k", "b", "dave", "2026-02-02T00:00:00Z").await.unwrap();
    assert_eq!(s.delete("k", "b", "dave", "2026-02-02T00:00:00Z").await, Err(StoreError::NotFound));
    let page = s.audit("k", 0, 50).await.unwrap();
    let got: Vec<(&str, &str, &str, Vec<String>)> = page
        .entries
        .iter()
        .map(|e| (e.action.name(), e.token_uid.as_str(), e.user.as_str(), e.fields.clone()))
        .collect();
    let all = ["name", "scope", "expires_on", "is_email_notification_enabled", "rate_limit"];
    let all: Vec<String> = all.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        got,
        [
            ("delete", "b", "dave", vec![]),
            ("update", "a", "carol", vec!["description".to_owned()]),
            ("create", "b", "alice", all.clone()),
            ("create", "a", "alice", all),
        ]
    );
    assert_eq!(page.total, 4);
    assert_eq!(page.entries[0].at, "2026-02-02T00:00:00Z");
}

#[tokio::test]
async fn round_trip_cap_and_names() {
    let s = SqliteStore::in_memory().unwrap();
    let cap = Cap { max: 3, static_count: 1 };
    s.create(&rec("a", "k", "one"), cap.clone()).await.unwrap();
    assert_eq!(s.create(&rec("b", "k", "one"), cap.clone()).await, Err(StoreError::DuplicateName));
    s.create(&rec("b", "k", "two"), cap.clone()).await.unwrap();
    assert_eq!(s.create(&rec("c", "k", "three"), cap.clone()).await, Err(StoreError::CapReached { max: 3 }));
    s.create(&rec("c", "other", "one"), cap.clone()).await.unwrap();
    assert_eq!(s.list("k").await.unwrap(), vec![rec("a", "k", "one"), rec("b", "k", "two")]);
    let mut changed = rec("a", "k", "renamed");
    changed.rate_limit = None;
    let want = changed.clone();
    let edited = s.modify("k", "a", Box::new(move |_| Ok(changed))).await.unwrap();
    assert_eq!(edited, want);
    assert_eq!(s.get("k", "a").await.unwrap(), Some(want));
    assert_eq!(
        s.modify("k", "b", Box::new(|r| Ok(TokenRecord { name: "renamed".into(), ..r }))).await,
        Err(StoreError::DuplicateName)
    );
    assert_eq!(s.modify("k", "zz", Box::new(Ok)).await, Err(StoreError::NotFound));
    let refused = FieldErrors::from([("name".to_owned(), vec!["no.".to_owned()])]);
    let errors = refused.clone();
    assert_eq!(s.modify("k", "b", Box::new(move |_| Err(errors))).await, Err(StoreError::Invalid(refused)));
    assert_eq!(s.get("k", "b").await.unwrap(), Some(rec("b", "k", "two")), "a refused edit changes nothing");
    assert_eq!(s.get("other", "a").await.unwrap(), None, "scoped by stack");
    assert_eq!(s.delete("k", "a", "alice", "2026-01-02T00:00:00Z").await.unwrap().name, "renamed");
    assert_eq!(s.delete("k", "a", "alice", "2026-01-02T00:00:00Z").await, Err(StoreError::NotFound));
    assert_eq!(crate::store::load_matching(&s, |_| true).await.unwrap().len(), 2);
}

#[tokio::test]
async fn an_edit_cannot_change_what_identifies_the_token() {
    let s = SqliteStore::in_memory().unwrap();
    s.create(&rec("a", "k", "one"), Cap { max: 30, static_count: 0 }).await.unwrap();
    let edit = |r: TokenRecord| {
        Ok(TokenRecord { uid: "b".into(), stack: "x".into(), secret_sha256: [0; 32], name: "two".into(), ..r })
    };
    let edited = s.modify("k", "a", Box::new(edit)).await.unwrap();
    assert_eq!(edited, TokenRecord { name: "two".into(), ..rec("a", "k", "one") });
    assert_eq!(s.get("k", "a").await.unwrap(), Some(edited));
}

/// Regeneration is the one change that replaces the secret hash (and keeps the old
/// one as the previous secret); an ordinary edit cannot touch either.
#[tokio::test]
async fn only_rotate_replaces_the_secret() {
    let s = SqliteStore::in_memory().unwrap();
    s.create(&rec("a", "k", "one"), Cap { max: 30, static_count: 0 }).await.unwrap();
    let old = rec("a", "k", "one").secret_sha256;
    let previous = Some(crate::token::PreviousSecret { sha256: old, until: 42 });
    let sneaky = move |r: TokenRecord| Ok(TokenRecord { secret_sha256: [7; 32], previous_secret: previous, ..r });
    assert_eq!(s.modify("k", "a", Box::new(sneaky)).await.unwrap(), rec("a", "k", "one"));
    let rotated = s.rotate("k", "a", Box::new(sneaky)).await.unwrap();
    assert_eq!((rotated.secret_sha256, rotated.previous_secret), ([7; 32], previous));
    assert_eq!(s.get("k", "a").await.unwrap(), Some(rotated), "read back as written");
    let kept = s.modify("k", "a", Box::new(|r| Ok(TokenRecord { name: "two".into(), ..r }))).await.unwrap();
    assert_eq!((kept.secret_sha256, kept.previous_secret), ([7; 32], previous), "an update keeps the rotation");
}

/// Two handles on one file stand for two processes: each edit reads and writes under
/// SQLite's write lock, so edits of different fields from both all stay.
#[test]
fn edits_through_two_handles_on_one_file_all_stay() {
    let dir = std::env::temp_dir().join(format!("sg-store-edits-{}", std::process::id()));
    let path = dir.join("t.db");
    let (a, b) = (SqliteStore::open(&path).unwrap(), SqliteStore::open(&path).unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).build().unwrap();
    rt.block_on(async {
        a.create(&rec("t", "k", "one"), Cap { max: 30, static_count: 0 }).await.unwrap();
        for i in 0..20 {
            let name = format!("name {i}");
            let description = format!("description {i}");
            let (x, y) = tokio::join!(
                a.modify("k", "t", Box::new(move |r| Ok(TokenRecord { name, ..r }))),
                b.modify("k", "t", Box::new(move |r| Ok(TokenRecord { description, ..r }))),
            );
            x.unwrap();
            y.unwrap();
            let got = a.get("k", "t").await.unwrap().unwrap();
            assert_eq!((got.name, got.description), (format!("name {i}"), format!("description {i}")));
        }
    });
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn notices_are_remembered_per_expiry_and_channel() {
    let s = SqliteStore::in_memory().unwrap();
    assert_eq!(s.notified_at("a", 100, "webhook").await.unwrap(), None);
    s.mark_notified("a", 100, "webhook", 7).await.unwrap();
    s.mark_notified("a", 100, "webhook", 8).await.unwrap();
    assert_eq!(s.notified_at("a", 100, "webhook").await.unwrap(), Some(7));
    assert_eq!(s.notified_at("a", 100, "smtp").await.unwrap(), None);
    assert_eq!(s.notified_at("a", 200, "webhook").await.unwrap(), None, "a new expiry re-arms");
}

#[test]
fn reopening_keeps_data_and_schema_version() {
    let dir = std::env::temp_dir().join(format!("sg-store-{}", std::process::id()));
    let path = dir.join("t.db");
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    {
        let s = SqliteStore::open(&path).unwrap();
        rt.block_on(s.create(&rec("a", "k", "one"), Cap { max: 30, static_count: 0 })).unwrap();
    }
    let s = SqliteStore::open(&path).unwrap();
    assert_eq!(rt.block_on(crate::store::load_matching(&s, |_| true)).unwrap().len(), 1);
    let c = s.conn.lock().unwrap();
    let v: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(v, MIGRATIONS.len() as i64);
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Loading every token streams from the read-only connection: while a load waits on a
/// slow consumer, the writer connection stays free (pings, creates), and once the
/// consumer reads on, every record arrives, in batches.
#[test]
fn a_load_in_progress_leaves_the_writer_free() {
    let dir = std::env::temp_dir().join(format!("sg-store-load-{}", std::process::id()));
    let s = SqliteStore::open(&dir.join("t.db")).unwrap();
    let records: Vec<TokenRecord> = (0..3000).map(|i| rec(&format!("t{i}"), &format!("k{}", i / 30), "n")).collect();
    let records: Vec<TokenRecord> =
        records.into_iter().enumerate().map(|(i, r)| TokenRecord { name: format!("n{i}"), ..r }).collect();
    assert_eq!(s.import(&records).unwrap(), 3000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let (tx, mut rx) = mpsc::channel(1);
        let loader = {
            let s = s.clone();
            tokio::spawn(async move { s.load_all(tx).await })
        };
        // The first batch is in the channel, the second is blocked behind it.
        let first: Vec<TokenRecord> = rx.recv().await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let writes = async {
            s.ping().await.unwrap();
            s.create(&rec("late", "other", "late"), Cap { max: 30, static_count: 0 }).await.unwrap();
        };
        tokio::time::timeout(std::time::Duration::from_secs(2), writes).await.expect("writer free during a load");
        let mut total = first.len();
        while let Some(batch) = rx.recv().await {
            assert!(batch.len() <= Batcher::SIZE);
            total += batch.len();
        }
        loader.await.unwrap().unwrap();
        assert_eq!(first.len(), Batcher::SIZE);
        // The load reads one consistent state: from before the create, or after it.
        assert!(total == 3000 || total == 3001, "{total}");
    });
    let _ = std::fs::remove_dir_all(&dir);
}

/// A damaged database file is refused: the integrity check runs beside the first load,
/// and the load (and every other operation) fails with its verdict, so a gateway never
/// starts from half-readable tokens.
#[test]
fn a_damaged_file_fails_the_load() {
    let dir = std::env::temp_dir().join(format!("sg-store-damaged-{}", std::process::id()));
    let path = dir.join("t.db");
    {
        let s = SqliteStore::open(&path).unwrap();
        let records: Vec<TokenRecord> =
            (0..2000).map(|i| TokenRecord { name: format!("n{i}"), ..rec(&format!("t{i}"), "k", "n") }).collect();
        s.import(&records).unwrap();
        let c = s.conn.lock().unwrap();
        c.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);").unwrap();
    }
    // Scribble over a page in the middle of the tokens table.
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2 / 4096 * 4096;
    bytes[middle..middle + 4096].iter_mut().enumerate().for_each(|(i, b)| *b = (i * 7 % 251) as u8);
    std::fs::write(&path, bytes).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let opened = SqliteStore::open(&path);
    if let Ok(s) = opened {
        let loaded = rt.block_on(crate::store::load_matching(&s, |_| true));
        // What the check found, not the symptom a read met.
        let err = loaded.as_ref().err().map(ToString::to_string).unwrap_or_default();
        assert!(
            err.contains("the store file is damaged"),
            "a damaged file must not load: {err:?} {:?}",
            loaded.map(|v| v.len())
        );
        assert!(rt.block_on(s.ping()).is_err(), "nor answer");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// An existing empty file is refused (a store emptied by a failed copy would otherwise
/// start as a new one, every token gone); a missing one is created, owner-only, and so
/// are its directory and SQLite's `-wal` file.
#[test]
fn an_empty_file_is_refused_and_a_new_store_is_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("sg-store-modes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("new").join("t.db");
    let s = SqliteStore::open_exclusive(&path).unwrap();
    s.import(&[rec("a", "k", "one")]).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), 0o600);
    assert_eq!(mode(&dir.join("new")), 0o700);
    assert_eq!(mode(&dir.join("new").join("t.db-wal")), 0o600);
    drop(s);

    let empty = dir.join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    for opened in [SqliteStore::open(&empty), SqliteStore::open_exclusive(&empty)] {
        let err = opened.err().expect("an empty file is refused").to_string();
        assert!(err.contains("is empty (0 bytes)") && err.contains("empty.db"), "{err}");
    }
    assert_eq!(std::fs::metadata(&empty).unwrap().len(), 0, "left as it was");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A file whose schema something else changed (a table dropped, a column renamed) is
/// refused at open, naming what is missing, instead of failing every later write.
#[test]
fn a_changed_schema_is_refused_at_open() {
    let dir = std::env::temp_dir().join(format!("sg-store-schema-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for (i, change) in
        ["DROP TABLE token_audit", "ALTER TABLE tokens RENAME COLUMN last_used_at TO used"].iter().enumerate()
    {
        let path = dir.join(format!("t{i}.db"));
        {
            let s = SqliteStore::open(&path).unwrap();
            s.import(&[rec("a", "k", "one")]).unwrap();
            s.conn.lock().unwrap().execute_batch(change).unwrap();
        }
        let err = SqliteStore::open(&path).err().expect("refused").to_string();
        assert!(err.contains("schema is not the one stackgate wrote"), "{change}: {err}");
        assert!(err.contains("token_audit") || err.contains("last_used_at"), "{change}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

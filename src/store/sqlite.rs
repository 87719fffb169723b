//! The embedded store: SQLite (bundled) in WAL mode with `synchronous = FULL`, so a
//! commit is on disk before the API answers and a crash at any point leaves either
//! the whole change or none of it. The schema is versioned with `PRAGMA user_version`.

use super::{
    unavailable, AuditAction, AuditColumns, AuditEntry, AuditPage, Batcher, Cap, Columns, Edit, ScopeMemo, StoreError,
    TokenStore,
};
use crate::token::TokenRecord;
use async_trait::async_trait;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row, TransactionBehavior};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    // 1: tokens and the expiry notices already sent.
    "CREATE TABLE tokens (
        uid TEXT PRIMARY KEY,
        stack TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        secret_sha256 BLOB NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        expires_on TEXT,
        is_email_notification_enabled INTEGER NOT NULL,
        rate_read INTEGER,
        rate_write INTEGER,
        created_by TEXT NOT NULL,
        updated_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE UNIQUE INDEX tokens_stack_name ON tokens(stack, name);
    CREATE TABLE expiry_notices (
        uid TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        channel TEXT NOT NULL,
        notified_at INTEGER NOT NULL,
        PRIMARY KEY (uid, expires_at, channel)
    );",
    // 2: suspension. Existing tokens stay in force.
    "ALTER TABLE tokens ADD COLUMN enabled INTEGER NOT NULL DEFAULT 1;",
    // 3: rotation: the previous secret's hash and the end of its grace period.
    "ALTER TABLE tokens ADD COLUMN previous_sha256 BLOB;
     ALTER TABLE tokens ADD COLUMN previous_until INTEGER;",
    // 4: the audit trail of token changes (never a secret or hash).
    "CREATE TABLE token_audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        stack TEXT NOT NULL,
        token_uid TEXT NOT NULL,
        action TEXT NOT NULL,
        actor TEXT NOT NULL,
        at TEXT NOT NULL,
        fields TEXT NOT NULL
    );
    CREATE INDEX token_audit_stack ON token_audit(stack, id);",
    // 5: when each token last authenticated (Unix seconds), written by the usage
    // flusher at most once an interval, never per request.
    "ALTER TABLE tokens ADD COLUMN last_used_at INTEGER;",
];

/// SQLite-backed [`TokenStore`].
#[derive(Clone)]
pub struct SqliteStore {
    conn: Arc<Mutex<Connection>>,
    /// A read-only connection for [`TokenStore::load_all`]: reading a million rows into a
    /// snapshot takes seconds, and under WAL it runs beside the writer connection
    /// instead of holding it (readiness pings, token changes and usage flushes go on).
    /// `None` for an in-memory database, which a second connection would not see.
    reader: Option<Arc<Mutex<Connection>>>,
    /// `PRAGMA quick_check` of a database file, run on its own connection beside the
    /// first load (it reads every page, about a second per million tokens): the load
    /// fails if the check does, and every other operation waits for its verdict.
    integrity: Arc<Mutex<Integrity>>,
}

/// Where the start-up integrity check stands.
enum Integrity {
    Running(std::thread::JoinHandle<Result<(), String>>),
    Done(Result<(), String>),
}

/// An exclusive `flock` on the database file itself, or an error naming the file while
/// another process holds one. On the file, not on a name: a symlink, a hard link or
/// another spelling of the path reaches the same lock (the thirty-fourth outside probe
/// ran a second gateway through a link to a lock file beside the database). `flock`
/// and SQLite's own locks (POSIX record locks) do not meet on a local filesystem, the
/// only kind SQLite's WAL mode runs on.
///
/// The descriptor stays open until the process ends (the kernel then lets the lock go,
/// however it ends): closing a descriptor of the file would drop SQLite's record locks
/// with it, whichever connection still runs. For the same reason a file this process
/// holds already is found by its identity before any descriptor of it is opened again;
/// a restart in place then takes the store again.
fn hold(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    /// The files this process holds, by device and inode.
    static HELD: Mutex<Vec<((u64, u64), std::fs::File)>> = Mutex::new(Vec::new());
    let failed = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("{}: {e}", path.display()));
    let mut held = HELD.lock().map_err(|_| StoreError::Unavailable("store lock poisoned".into()))?;
    let identity = |meta: &std::fs::Metadata| (meta.dev(), meta.ino());
    if let Ok(meta) = std::fs::metadata(path) {
        if held.iter().any(|(key, _)| *key == identity(&meta)) {
            return Ok(());
        }
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PRIVATE_FILE)
        .open(path)
        .map_err(|e| failed(&e))?;
    let key = identity(&file.metadata().map_err(|e| failed(&e))?);
    match file.try_lock() {
        Ok(()) => {
            held.push((key, file));
            Ok(())
        }
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Unavailable(format!(
            "{} is in use by another stackgate process; one embedded store serves one gateway, \
             several replicas share PostgreSQL (docs/scale-out.md)",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(failed(&e)),
    }
}

/// The integrity check's verdict, waiting for it if it is still running (blocking).
fn verified(integrity: &Mutex<Integrity>) -> Result<(), StoreError> {
    let mut state = integrity.lock().map_err(|_| StoreError::Unavailable("store lock poisoned".into()))?;
    if matches!(*state, Integrity::Running(_)) {
        if let Integrity::Running(check) = std::mem::replace(&mut *state, Integrity::Done(Ok(()))) {
            *state = Integrity::Done(check.join().unwrap_or_else(|_| Err("integrity check panicked".into())));
        }
    }
    match &*state {
        Integrity::Done(verdict) => verdict.clone().map_err(StoreError::Unavailable),
        Integrity::Running(_) => Ok(()),
    }
}

/// `PRAGMA quick_check`: `Err` with what it found unless the database is sound.
fn quick_check(conn: &Connection) -> Result<(), String> {
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if check == "ok" {
        Ok(())
    } else {
        Err(format!("the store file is damaged (integrity check: {check}); restore it from a backup"))
    }
}

/// Mode of a store file this process creates (and of the directory it creates for
/// one): the owner's alone. The file holds every token's secret hash and the audit
/// trail; SQLite gives its `-wal` and `-shm` files the database file's mode.
const PRIVATE_FILE: u32 = 0o600;
const PRIVATE_DIR: u32 = 0o700;

/// Makes the store's directory and file (owner-only) if they are missing, and refuses
/// an existing file that is empty: SQLite would take it for a new database, and a
/// store emptied by a failed copy or restore would start as one, every token gone
/// without a word. A file stackgate has opened is never empty (switching it to WAL
/// writes its header before anything else; the log holds the rest until a
/// checkpoint). Warns when an existing file is readable by others than its owner; the
/// operator may mean it (a backup agent's group), so it is left as it is.
fn prepare_file(path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let failed = |e: &dyn std::fmt::Display| StoreError::Unavailable(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new().recursive(true).mode(PRIVATE_DIR).create(dir).map_err(|e| failed(&e))?;
    }
    // A write-ahead log beside an empty file is SQLite's to recover, not an emptied store.
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let logged = std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0);
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() && meta.len() == 0 && !logged => Err(StoreError::Unavailable(format!(
            "{} is empty (0 bytes), and a store stackgate has written never is: restore it from a \
             backup, or remove the file to start a new, empty store",
            path.display()
        ))),
        Ok(meta) => {
            if meta.is_file() && meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", meta.permissions().mode() & 0o777),
                    "the token store is open to other users than its owner (it holds the tokens' secret hashes); chmod 600 it unless that is meant"
                );
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(PRIVATE_FILE)
            .open(path)
            .map(drop)
            .or_else(|e| if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(()) } else { Err(failed(&e)) }),
        Err(e) => Err(failed(&e)),
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and migrates it.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        prepare_file(path)?;
        Self::open_prepared(path)
    }

    /// [`SqliteStore::open`] once [`prepare_file`] has passed.
    fn open_prepared(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open(path).map_err(|e| unavailable(&e))?;
        let mut store = Self::init(conn, false)?;
        let read_only = || {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            let c = Connection::open_with_flags(path, flags).map_err(|e| unavailable(&e))?;
            c.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| unavailable(&e))?;
            Ok::<_, StoreError>(c)
        };
        store.reader = Some(Arc::new(Mutex::new(read_only()?)));
        let checker = read_only()?;
        let check = std::thread::Builder::new()
            .name("sqlite-check".into())
            .spawn(move || quick_check(&checker))
            .map_err(|e| unavailable(&e))?;
        store.integrity = Arc::new(Mutex::new(Integrity::Running(check)));
        Ok(store)
    }

    /// Opens the database at `path` for this process alone, as a gateway serves it: the
    /// snapshot it serves is changed only by its own token API, so a second gateway on
    /// the same file would keep serving what the first deleted (the thirty-third outside
    /// probe: a revoked token kept working there). See [`hold`].
    pub fn open_exclusive(path: &Path) -> Result<Self, StoreError> {
        prepare_file(path)?;
        hold(path)?;
        Self::open_prepared(path)
    }

    /// An in-memory database (nothing survives the process).
    pub fn in_memory() -> Result<Self, StoreError> {
        Self::init(Connection::open_in_memory().map_err(|e| unavailable(&e))?, true)
    }

    /// Bulk-loads records in one transaction (migrations, benchmarks); it does not check
    /// the per-stack cap, so it is not reachable from the API.
    pub fn import(&self, records: &[TokenRecord]) -> Result<usize, StoreError> {
        verified(&self.integrity)?;
        let mut conn = self.conn.lock().map_err(|_| StoreError::Unavailable("store lock poisoned".into()))?;
        let tx = conn.transaction().map_err(|e| unavailable(&e))?;
        {
            let sql = format!(
                "INSERT INTO tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"
            );
            let mut stmt = tx.prepare(&sql).map_err(|e| unavailable(&e))?;
            for rec in records {
                let previous = super::previous_columns(rec);
                let rate = rec.rate_limit.map(|r| (r.read_per_second, r.write_per_second));
                stmt.execute(params![
                    rec.uid,
                    rec.stack,
                    rec.name,
                    rec.description,
                    rec.secret_sha256.as_slice(),
                    super::scope_json(rec)?,
                    rec.expires_on.as_ref().map(|e| e.text.clone()),
                    rec.is_email_notification_enabled,
                    rate.map(|r| r.0),
                    rate.map(|r| r.1),
                    rec.created_by,
                    rec.updated_by,
                    rec.created_at,
                    rec.updated_at,
                    rec.enabled,
                    previous.0,
                    previous.1
                ])
                .map_err(|e| unavailable(&e))?;
            }
        }
        tx.commit().map_err(|e| unavailable(&e))?;
        Ok(records.len())
    }

    /// Sets the connection up and migrates; `check` runs the integrity check here (a
    /// file's runs beside the first load instead: see [`SqliteStore::open`]).
    fn init(conn: Connection, check: bool) -> Result<Self, StoreError> {
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| unavailable(&e))?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(|e| unavailable(&e))?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(|e| unavailable(&e))?;
        if check {
            quick_check(&conn).map_err(StoreError::Unavailable)?;
        }
        migrate(&conn)?;
        let integrity = Arc::new(Mutex::new(Integrity::Done(Ok(()))));
        Ok(SqliteStore { conn: Arc::new(Mutex::new(conn)), reader: None, integrity })
    }

    /// [`TokenStore::modify`] and [`TokenStore::rotate`]: one read-modify-write.
    async fn edit(&self, stack: &str, uid: &str, edit: Edit, rotating: bool) -> Result<TokenRecord, StoreError> {
        let (stack, uid) = (stack.to_owned(), uid.to_owned());
        self.with(move |c| {
            // IMMEDIATE takes the write lock before the read, so no other writer (another
            // handle or process on the same file) can commit between read and write.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| unavailable(&e))?;
            let stored =
                query(&tx, "WHERE stack = ?1 AND uid = ?2", &[&stack, &uid])?.pop().ok_or(StoreError::NotFound)?;
            let before = stored.clone();
            let rec = super::apply_edit(stored, edit, rotating)?;
            if super::changes_nothing(&before, &rec, rotating) {
                return Ok(before);
            }
            let scope = super::scope_json(&rec)?;
            let rate = rec.rate_limit.map(|r| (r.read_per_second, r.write_per_second));
            let previous = super::previous_columns(&rec);
            let changed = tx.execute(
                "UPDATE tokens SET name = ?3, description = ?4, scope = ?5, expires_on = ?6,
                    is_email_notification_enabled = ?7, rate_read = ?8, rate_write = ?9,
                    updated_by = ?10, updated_at = ?11, enabled = ?12, secret_sha256 = ?13,
                    previous_sha256 = ?14, previous_until = ?15
                 WHERE stack = ?1 AND uid = ?2",
                params![
                    stack,
                    uid,
                    rec.name,
                    rec.description,
                    scope,
                    rec.expires_on.as_ref().map(|e| e.text.clone()),
                    rec.is_email_notification_enabled,
                    rate.map(|r| r.0),
                    rate.map(|r| r.1),
                    rec.updated_by,
                    rec.updated_at,
                    rec.enabled,
                    rec.secret_sha256.as_slice(),
                    previous.0,
                    previous.1
                ],
            );
            match changed {
                Ok(_) => {}
                Err(e) if is_name_clash(&e) => return Err(StoreError::DuplicateName),
                Err(e) => return Err(unavailable(&e)),
            }
            let action = if rotating { AuditAction::Regenerate } else { AuditAction::Update };
            write_audit(&tx, &super::audit_entry(action, &rec, Some(&before)))?;
            tx.commit().map_err(|e| unavailable(&e))?;
            Ok(rec)
        })
        .await
    }

    /// Runs `f` on the connection in a blocking thread (SQLite calls fsync).
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let integrity = Arc::clone(&self.integrity);
        Self::on(Arc::clone(&self.conn), move |c| {
            verified(&integrity)?;
            f(c)
        })
        .await
    }

    /// Runs `f` on the read-only connection (the writer's for an in-memory database),
    /// without waiting for the integrity check (a load checks its verdict at its end).
    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        Self::on(Arc::clone(self.reader.as_ref().unwrap_or(&self.conn)), f).await
    }

    async fn on<T: Send + 'static>(
        conn: Arc<Mutex<Connection>>,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().map_err(|_| StoreError::Unavailable("store lock poisoned".into()))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?
    }
}

fn migrate(conn: &Connection) -> Result<(), StoreError> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| unavailable(&e))?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "database schema version {version} is newer than this stackgate ({})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.unchecked_transaction().map_err(|e| unavailable(&e))?;
        tx.execute_batch(sql).map_err(|e| unavailable(&e))?;
        tx.pragma_update(None, "user_version", i + 1).map_err(|e| unavailable(&e))?;
        tx.commit().map_err(|e| unavailable(&e))?;
        tracing::info!(version = i + 1, "token store migrated");
    }
    check_schema(conn)
}

/// Every table and column the store reads or writes, as the migrations left them. A
/// file whose schema was changed by something else (a table dropped, a column renamed)
/// is refused at start, naming what is missing, rather than starting and failing each
/// write that meets the gap while `/readyz` reports the store up.
/// (`tokens`: [`COLUMNS`] and the usage flusher's `last_used_at`.)
const SCHEMA: &[(&str, &str)] = &[
    ("tokens", "last_used_at"),
    ("expiry_notices", "uid, expires_at, channel, notified_at"),
    ("token_audit", "id, stack, token_uid, action, actor, at, fields"),
];

fn check_schema(conn: &Connection) -> Result<(), StoreError> {
    for &(table, columns) in SCHEMA {
        let columns = if table == "tokens" { format!("{COLUMNS}, {columns}") } else { columns.to_owned() };
        conn.prepare(&format!("SELECT {columns} FROM {table} LIMIT 0")).map_err(|e| {
            StoreError::Unavailable(format!(
                "the store's schema is not the one stackgate wrote (version {}): {e}; it was changed by \
                 something else: restore it from a backup",
                MIGRATIONS.len()
            ))
        })?;
    }
    Ok(())
}

const COLUMNS: &str = "uid, stack, name, description, secret_sha256, scope, expires_on, \
    is_email_notification_enabled, rate_read, rate_write, created_by, updated_by, created_at, updated_at, enabled, \
    previous_sha256, previous_until";

/// A row -> record; rows that no longer parse are reported, not loaded.
fn record(row: &Row<'_>) -> rusqlite::Result<Option<TokenRecord>> {
    record_in(row, None)
}

/// [`record`], for one row of a read of many when `scopes` is given (they share it).
fn record_in(row: &Row<'_>, scopes: Option<&mut ScopeMemo>) -> rusqlite::Result<Option<TokenRecord>> {
    Ok(Columns {
        uid: row.get(0)?,
        stack: row.get(1)?,
        name: row.get(2)?,
        description: row.get(3)?,
        secret: row.get(4)?,
        scope: row.get(5)?,
        expires_on: row.get(6)?,
        notify: row.get(7)?,
        rate: (row.get(8)?, row.get(9)?),
        created_by: row.get(10)?,
        updated_by: row.get(11)?,
        created_at: row.get(12)?,
        updated_at: row.get(13)?,
        enabled: row.get(14)?,
        previous: (row.get(15)?, row.get(16)?),
    }
    .into_record(scopes))
}

fn query(conn: &Connection, sql_where: &str, args: &[&dyn rusqlite::ToSql]) -> Result<Vec<TokenRecord>, StoreError> {
    let sql = format!("SELECT {COLUMNS} FROM tokens {sql_where} ORDER BY created_at, uid");
    let mut stmt = conn.prepare(&sql).map_err(|e| unavailable(&e))?;
    let rows = stmt.query_map(args, record).map_err(|e| unavailable(&e))?;
    let mut out = Vec::new();
    for row in rows {
        if let Some(rec) = row.map_err(|e| unavailable(&e))? {
            out.push(rec);
        }
    }
    Ok(out)
}

/// Records a change in the transaction that makes it.
fn write_audit(tx: &Connection, entry: &AuditEntry) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO token_audit (stack, token_uid, action, actor, at, fields) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![entry.stack, entry.token_uid, entry.action.name(), entry.user, entry.at, super::fields_json(entry)?],
    )
    .map(|_| ())
    .map_err(|e| unavailable(&e))
}

fn is_name_clash(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, Some(msg))
        if f.code == rusqlite::ErrorCode::ConstraintViolation && msg.contains("tokens.name"))
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.with(|c| c.query_row("SELECT 1", [], |_| Ok(())).map_err(|e| unavailable(&e))).await
    }

    async fn load_all(&self, out: mpsc::Sender<Vec<TokenRecord>>) -> Result<(), StoreError> {
        let integrity = Arc::clone(&self.integrity);
        self.with_reader(move |c| {
            // No ORDER BY: the snapshot is a hash index, and sorting a million rows
            // would cost the start-up a temporary B-tree.
            // A read that fails on a damaged file reports the integrity check's verdict
            // (what is damaged) rather than the symptom the read met (a text column that
            // is not UTF-8, say).
            let damaged = |e: rusqlite::Error| verified(&integrity).err().unwrap_or_else(|| unavailable(&e));
            let mut stmt = c.prepare(&format!("SELECT {COLUMNS} FROM tokens")).map_err(damaged)?;
            let mut scopes = ScopeMemo::default();
            let rows = stmt.query_map([], |row| record_in(row, Some(&mut scopes))).map_err(damaged)?;
            let mut batcher = Batcher::new();
            for row in rows {
                let Some(rec) = row.map_err(damaged)? else { continue };
                if let Some(full) = batcher.push(rec) {
                    if out.blocking_send(full).is_err() {
                        return Ok(());
                    }
                }
            }
            if let Some(rest) = batcher.rest() {
                let _ = out.blocking_send(rest);
            }
            // What was read counts only from a sound database.
            verified(&integrity)
        })
        .await
    }

    async fn count(&self) -> Result<usize, StoreError> {
        self.with_reader(|c| c.query_row("SELECT COUNT(*) FROM tokens", [], |r| r.get(0)).map_err(|e| unavailable(&e)))
            .await
    }

    async fn list(&self, stack: &str) -> Result<Vec<TokenRecord>, StoreError> {
        let stack = stack.to_owned();
        self.with(move |c| query(c, "WHERE stack = ?1", &[&stack])).await
    }

    async fn get(&self, stack: &str, uid: &str) -> Result<Option<TokenRecord>, StoreError> {
        let (stack, uid) = (stack.to_owned(), uid.to_owned());
        self.with(move |c| Ok(query(c, "WHERE stack = ?1 AND uid = ?2", &[&stack, &uid])?.pop())).await
    }

    async fn create(&self, rec: &TokenRecord, cap: Cap) -> Result<(), StoreError> {
        let rec = rec.clone();
        self.with(move |c| {
            let scope = super::scope_json(&rec)?;
            // IMMEDIATE takes the write lock first, so count-then-insert is atomic.
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| unavailable(&e))?;
            let stored: u32 = tx
                .query_row("SELECT COUNT(*) FROM tokens WHERE stack = ?1", [&rec.stack], |r| r.get(0))
                .map_err(|e| unavailable(&e))?;
            if stored + cap.static_count >= cap.max {
                return Err(StoreError::CapReached { max: cap.max });
            }
            let rate = rec.rate_limit.map(|r| (r.read_per_second, r.write_per_second));
            let previous = super::previous_columns(&rec);
            let inserted = tx.execute(
                &format!("INSERT INTO tokens ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)"),
                params![
                    rec.uid, rec.stack, rec.name, rec.description, rec.secret_sha256.as_slice(), scope,
                    rec.expires_on.as_ref().map(|e| e.text.clone()), rec.is_email_notification_enabled,
                    rate.map(|r| r.0), rate.map(|r| r.1), rec.created_by, rec.updated_by, rec.created_at, rec.updated_at, rec.enabled,
                    previous.0, previous.1
                ],
            );
            match inserted {
                Ok(_) => {}
                Err(e) if is_name_clash(&e) => return Err(StoreError::DuplicateName),
                Err(e) => return Err(unavailable(&e)),
            }
            write_audit(&tx, &super::audit_entry(AuditAction::Create, &rec, None))?;
            tx.commit().map_err(|e| unavailable(&e))
        })
        .await
    }

    async fn modify(&self, stack: &str, uid: &str, edit: Edit) -> Result<TokenRecord, StoreError> {
        self.edit(stack, uid, edit, false).await
    }

    async fn rotate(&self, stack: &str, uid: &str, edit: Edit) -> Result<TokenRecord, StoreError> {
        self.edit(stack, uid, edit, true).await
    }

    async fn delete(&self, stack: &str, uid: &str, by: &str, at: &str) -> Result<TokenRecord, StoreError> {
        let (stack, uid, by, at) = (stack.to_owned(), uid.to_owned(), by.to_owned(), at.to_owned());
        self.with(move |c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| unavailable(&e))?;
            let rec =
                query(&tx, "WHERE stack = ?1 AND uid = ?2", &[&stack, &uid])?.pop().ok_or(StoreError::NotFound)?;
            tx.execute("DELETE FROM tokens WHERE uid = ?1", [&uid]).map_err(|e| unavailable(&e))?;
            tx.execute("DELETE FROM expiry_notices WHERE uid = ?1", [&uid]).map_err(|e| unavailable(&e))?;
            let entry = AuditEntry { user: by, at, ..super::audit_entry(AuditAction::Delete, &rec, None) };
            write_audit(&tx, &entry)?;
            tx.commit().map_err(|e| unavailable(&e))?;
            Ok(rec)
        })
        .await
    }

    async fn audit(&self, stack: &str, skip: u64, limit: u64) -> Result<AuditPage, StoreError> {
        let stack = stack.to_owned();
        let (skip, limit) = (i64::try_from(skip).unwrap_or(i64::MAX), i64::try_from(limit).unwrap_or(i64::MAX));
        self.with(move |c| {
            let total: i64 = c
                .query_row("SELECT COUNT(*) FROM token_audit WHERE stack = ?1", [&stack], |r| r.get(0))
                .map_err(|e| unavailable(&e))?;
            let mut stmt = c
                .prepare(
                    "SELECT id, stack, token_uid, action, actor, at, fields FROM token_audit
                     WHERE stack = ?1 ORDER BY id DESC LIMIT ?2 OFFSET ?3",
                )
                .map_err(|e| unavailable(&e))?;
            let rows = stmt
                .query_map(params![stack, limit, skip], |row| {
                    Ok(AuditColumns {
                        id: row.get(0)?,
                        stack: row.get(1)?,
                        token_uid: row.get(2)?,
                        action: row.get(3)?,
                        user: row.get(4)?,
                        at: row.get(5)?,
                        fields: row.get(6)?,
                    })
                })
                .map_err(|e| unavailable(&e))?;
            let mut entries = Vec::new();
            for row in rows {
                entries.extend(row.map_err(|e| unavailable(&e))?.into_entry());
            }
            Ok(AuditPage { entries, total: u64::try_from(total).unwrap_or(0) })
        })
        .await
    }

    async fn notified_at(&self, uid: &str, expires_at: i64, channel: &str) -> Result<Option<i64>, StoreError> {
        let (uid, channel) = (uid.to_owned(), channel.to_owned());
        self.with(move |c| {
            c.query_row(
                "SELECT notified_at FROM expiry_notices WHERE uid = ?1 AND expires_at = ?2 AND channel = ?3",
                params![uid, expires_at, channel],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| unavailable(&e))
        })
        .await
    }

    async fn first_notice(&self, uid: &str, expires_at: i64) -> Result<Option<i64>, StoreError> {
        let uid = uid.to_owned();
        self.with(move |c| {
            c.query_row(
                "SELECT MIN(notified_at) FROM expiry_notices WHERE uid = ?1 AND expires_at = ?2",
                params![uid, expires_at],
                |r| r.get(0),
            )
            .map_err(|e| unavailable(&e))
        })
        .await
    }

    async fn record_last_used(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        let used = used.to_vec();
        self.with(move |c| {
            let tx = c.transaction().map_err(|e| unavailable(&e))?;
            {
                let mut stmt = tx
                    .prepare(
                        "UPDATE tokens SET last_used_at = ?2 WHERE uid = ?1 \
                         AND (last_used_at IS NULL OR last_used_at < ?2)",
                    )
                    .map_err(|e| unavailable(&e))?;
                for (uid, at) in &used {
                    stmt.execute(params![uid, at]).map_err(|e| unavailable(&e))?;
                }
            }
            tx.commit().map_err(|e| unavailable(&e))
        })
        .await
    }

    async fn last_used(&self, stack: &str) -> Result<HashMap<String, i64>, StoreError> {
        let stack = stack.to_owned();
        self.with(move |c| {
            let mut stmt = c
                .prepare("SELECT uid, last_used_at FROM tokens WHERE stack = ?1 AND last_used_at IS NOT NULL")
                .map_err(|e| unavailable(&e))?;
            let rows = stmt
                .query_map(params![stack], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
                .map_err(|e| unavailable(&e))?;
            rows.collect::<Result<HashMap<_, _>, _>>().map_err(|e| unavailable(&e))
        })
        .await
    }

    async fn mark_notified(&self, uid: &str, expires_at: i64, channel: &str, at: i64) -> Result<(), StoreError> {
        let (uid, channel) = (uid.to_owned(), channel.to_owned());
        self.with(move |c| {
            c.execute(
                "INSERT OR IGNORE INTO expiry_notices (uid, expires_at, channel, notified_at) VALUES (?1, ?2, ?3, ?4)",
                params![uid, expires_at, channel, at],
            )
            .map(|_| ())
            .map_err(|e| unavailable(&e))
        })
        .await
    }
}

#[cfg(test)]
mod tests;

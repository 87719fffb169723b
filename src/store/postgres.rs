//! The shared store: PostgreSQL, for several replicas (DESIGN.md section 7).
//!
//! Every change is one transaction that also `NOTIFY`s the other replicas (delivered
//! only if it commits). A listener connection per replica turns notifications into
//! [`StoreEvent`]s and asks for a full re-read after every (re)connect, so a
//! notification missed while disconnected cannot leave a revoked token alive. The
//! per-stack cap is made atomic across replicas by a per-stack advisory lock held for
//! the count-then-insert transaction.

mod follow;

use follow::listen;

use super::answered::{answered, no_answer, ANSWER_TIMEOUT};
use super::pg_tls::RustlsConnect;
use super::{
    unavailable, AuditAction, AuditColumns, AuditEntry, AuditPage, Batcher, Cap, Columns, Edit, ScopeMemo, StoreError,
    StoreEvent, TokenStore,
};
use crate::config::Postgres;
use crate::token::TokenRecord;
use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Row};

/// The notification channel every replica listens on.
const CHANNEL: &str = "stackgate_tokens";
/// Serialises migrations of replicas starting together (an arbitrary fixed key).
const MIGRATION_LOCK: i64 = 0x5354_4b47_4154_4531;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long the schema check and migration at start may take.
const MIGRATE_TIMEOUT: Duration = Duration::from_secs(15);

/// A connection lent to one call by [`PgStore::leased`]: handed back to the pool by
/// [`Lease::give_back`]; dropped any other way, the statement it may still be running
/// is cancelled and the connection closed.
struct Lease {
    client: Option<Object>,
    tls: RustlsConnect,
}

impl Lease {
    fn give_back(mut self) {
        drop(self.client.take());
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else { return };
        // Closing alone is not seen by a server that is running the statement or
        // waiting for a lock (it notices when it next writes), and the pool's place is
        // free at once: without the cancel a slow server could be left with more of
        // this replica's sessions than `pool_size`, each holding its locks.
        let cancel = client.cancel_token();
        let tls = self.tls.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = tokio::time::timeout(CONNECT_TIMEOUT, cancel.cancel_query(tls)).await;
            });
        }
        drop(Object::take(client));
    }
}

/// Schema migrations, applied in order; the index + 1 is the schema version.
const MIGRATIONS: &[&str] = &[
    // 1: tokens, the expiry notices already sent, and leases for one-replica duties.
    "CREATE TABLE stackgate_tokens (
        uid TEXT PRIMARY KEY,
        stack TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT NOT NULL,
        secret_sha256 BYTEA NOT NULL UNIQUE,
        scope TEXT NOT NULL,
        expires_on TEXT,
        is_email_notification_enabled BOOLEAN NOT NULL,
        rate_read INTEGER,
        rate_write INTEGER,
        created_by TEXT NOT NULL,
        updated_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL,
        CONSTRAINT stackgate_tokens_stack_name UNIQUE (stack, name)
    );
    CREATE INDEX stackgate_tokens_stack ON stackgate_tokens (stack);
    CREATE TABLE stackgate_expiry_notices (
        uid TEXT NOT NULL,
        expires_at BIGINT NOT NULL,
        channel TEXT NOT NULL,
        notified_at BIGINT NOT NULL,
        PRIMARY KEY (uid, expires_at, channel)
    );
    CREATE TABLE stackgate_leases (
        name TEXT PRIMARY KEY,
        holder TEXT NOT NULL,
        until TIMESTAMPTZ NOT NULL
    );",
    // 2: suspension. Existing tokens stay in force.
    "ALTER TABLE stackgate_tokens ADD COLUMN enabled BOOLEAN NOT NULL DEFAULT TRUE;",
    // 3: rotation: the previous secret's hash and the end of its grace period.
    "ALTER TABLE stackgate_tokens ADD COLUMN previous_sha256 BYTEA;
     ALTER TABLE stackgate_tokens ADD COLUMN previous_until BIGINT;",
    // 4: the audit trail of token changes (never a secret or hash).
    "CREATE TABLE stackgate_token_audit (
        id BIGSERIAL PRIMARY KEY,
        stack TEXT NOT NULL,
        token_uid TEXT NOT NULL,
        action TEXT NOT NULL,
        actor TEXT NOT NULL,
        at TEXT NOT NULL,
        fields TEXT NOT NULL
    );
    CREATE INDEX stackgate_token_audit_stack ON stackgate_token_audit (stack, id);",
    // 5: when each token last authenticated (Unix seconds), written by each replica's
    // usage flusher at most once an interval, never per request.
    "ALTER TABLE stackgate_tokens ADD COLUMN last_used_at BIGINT;",
];

const COLUMNS: &str = "uid, stack, name, description, secret_sha256, scope, expires_on, \
    is_email_notification_enabled, rate_read, rate_write, created_by, updated_by, created_at, updated_at, enabled, \
    previous_sha256, previous_until";

/// PostgreSQL-backed [`TokenStore`].
pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    /// How connections are made, kept for cancel requests (see [`Lease`]).
    tls: RustlsConnect,
    /// This process's id, sent with its notifications so it can skip its own.
    replica: String,
    resync_interval: Duration,
    /// Handed out once, to the gateway, by [`TokenStore::subscribe`].
    events: Mutex<Option<mpsc::UnboundedReceiver<StoreEvent>>>,
    events_tx: mpsc::UnboundedSender<StoreEvent>,
    /// This replica's changes whose commit was sent and never answered (see
    /// [`PgStore::commit`]).
    in_doubt: InDoubt,
}

/// Tokens (`stack`, `uid`) whose commit this replica sent and has not had answered:
/// awaited, or given up (`store::answered`). The gateway applied nothing for a given-up
/// one, yet its commit may still land; its notification, which the listener skips for
/// this replica's own changes, is then applied like another replica's, or, for a
/// create, the token is deleted (see [`Doubt`]).
pub(super) type InDoubt = Arc<Mutex<HashMap<(String, String), Doubt>>>;

/// What a commit in doubt was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Doubt {
    /// An update, regeneration or deletion.
    Change,
    /// A create whose answer is still awaited.
    Create,
    /// A create given up on: the API answered 503 and its secret was never shown, so a
    /// token it made is deleted ([`StoreEvent::Orphaned`]).
    Abandoned,
}

/// Settles a commit's mark in [`InDoubt`] when the commit is answered; dropped unsettled
/// (the call given up, the connection lost), it leaves the mark, and a create's becomes
/// [`Doubt::Abandoned`] and is reported, whether or not its notification came meanwhile.
struct Pending<'a> {
    store: &'a PgStore,
    key: Option<(String, String)>,
}

impl Pending<'_> {
    fn settle(mut self) {
        if let (Some(key), Ok(mut marks)) = (self.key.take(), self.store.in_doubt.lock()) {
            marks.remove(&key);
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(key) = self.key.take() else { return };
        let Ok(mut marks) = self.store.in_doubt.lock() else { return };
        if let Some(doubt @ Doubt::Create) = marks.get_mut(&key) {
            *doubt = Doubt::Abandoned;
            let (stack, uid) = key;
            let _ = self.store.events_tx.send(StoreEvent::Orphaned { stack, uid });
        }
    }
}

impl PgStore {
    /// Connects, migrates the schema and starts listening for other replicas' changes.
    pub async fn connect(settings: &Postgres) -> Result<Self, StoreError> {
        let replica = super::process_id();
        let mut config: tokio_postgres::Config = settings.url.expose().parse().map_err(|e| unavailable(&e))?;
        config
            .connect_timeout(CONNECT_TIMEOUT)
            .keepalives_idle(Duration::from_secs(30))
            .ssl_mode(super::pg_tls::driver_mode(settings.ssl_mode));
        if config.get_application_name().is_none() {
            config.application_name("stackgate");
        }
        let tls = super::pg_tls::connector(settings.ssl_mode, settings.ca_file.as_ref())
            .map_err(|e| StoreError::Unavailable(format!("PostgreSQL TLS: {e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| unavailable(&e))?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let store = PgStore {
            pool,
            config,
            tls: tls.clone(),
            replica,
            resync_interval: settings.resync_interval,
            events: Mutex::new(Some(events)),
            events_tx,
            in_doubt: InDoubt::default(),
        };
        // Bounded as every later call is (a server that accepts and then answers
        // nothing would hold the start for ever), more loosely: a replica starting
        // beside another waits for its migration under the lock.
        tokio::time::timeout(MIGRATE_TIMEOUT, store.migrate()).await.map_err(|_| {
            StoreError::Unavailable(format!("no answer to the schema migration within {} s", MIGRATE_TIMEOUT.as_secs()))
        })??;
        tokio::spawn(listen(
            store.config.clone(),
            store.pool.clone(),
            tls,
            store.replica.clone(),
            store.resync_interval,
            store.events_tx.clone(),
            Arc::clone(&store.in_doubt),
        ));
        Ok(store)
    }

    /// [`TokenStore::modify`] and [`TokenStore::rotate`]: one read-modify-write.
    async fn edit(&self, stack: &str, uid: &str, edit: Edit, rotating: bool) -> Result<TokenRecord, StoreError> {
        self.leased(async |client| self.edit_on(client, stack, uid, edit, rotating).await).await
    }

    async fn edit_on(
        &self,
        client: &mut Object,
        stack: &str,
        uid: &str,
        edit: Edit,
        rotating: bool,
    ) -> Result<TokenRecord, StoreError> {
        let tx = client.transaction().await.map_err(pg)?;
        // FOR UPDATE locks the row until commit: a concurrent change (any replica) waits
        // here and then reads the row as this transaction left it.
        let row = tx
            .query_opt(
                &format!("SELECT {COLUMNS} FROM stackgate_tokens WHERE stack = $1 AND uid = $2 FOR UPDATE"),
                &[&stack, &uid],
            )
            .await
            .map_err(pg)?;
        let stored = row.as_ref().and_then(record).ok_or(StoreError::NotFound)?;
        let before = stored.clone();
        let rec = super::apply_edit(stored, edit, rotating)?;
        if super::changes_nothing(&before, &rec, rotating) {
            return Ok(before);
        }
        let scope = super::scope_json(&rec)?;
        let (rate_read, rate_write) = rate_columns(&rec);
        let expires_on = rec.expires_on.as_ref().map(|e| e.text.as_str());
        let previous = super::previous_columns(&rec);
        let changed = tx
            .execute(
                "UPDATE stackgate_tokens SET name = $3, description = $4, scope = $5, expires_on = $6,
                    is_email_notification_enabled = $7, rate_read = $8, rate_write = $9,
                    updated_by = $10, updated_at = $11, enabled = $12, secret_sha256 = $13,
                    previous_sha256 = $14, previous_until = $15
                 WHERE stack = $1 AND uid = $2",
                &[
                    &stack,
                    &uid,
                    &rec.name,
                    &rec.description,
                    &scope,
                    &expires_on,
                    &rec.is_email_notification_enabled,
                    &rate_read,
                    &rate_write,
                    &rec.updated_by,
                    &rec.updated_at,
                    &rec.enabled,
                    &rec.secret_sha256.as_slice(),
                    &previous.0,
                    &previous.1,
                ],
            )
            .await;
        written(changed)?;
        let action = if rotating { AuditAction::Regenerate } else { AuditAction::Update };
        write_audit(&tx, &super::audit_entry(action, &rec, Some(&before))).await?;
        tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.payload(&rec)]).await.map_err(pg)?;
        self.commit(tx, stack, uid, Doubt::Change).await?;
        Ok(rec)
    }

    /// Commits a change of token (`stack`, `uid`). Marked in doubt while the answer is
    /// awaited (see [`Pending`]). A commit that never lands leaves its mark for good: it
    /// costs only a re-read (or a delete that finds nothing) if a notification comes.
    async fn commit(
        &self,
        tx: deadpool_postgres::Transaction<'_>,
        stack: &str,
        uid: &str,
        doubt: Doubt,
    ) -> Result<(), StoreError> {
        let key = (stack.to_owned(), uid.to_owned());
        if let Ok(mut marks) = self.in_doubt.lock() {
            marks.insert(key.clone(), doubt);
        }
        let pending = Pending { store: self, key: Some(key) };
        let committed = tx.commit().await;
        // Settled when the server answered (committed, or refused: an error it
        // reports). Any other failure (the connection lost after the COMMIT went out)
        // leaves the outcome unknown, as a give-up does.
        match &committed {
            Ok(()) => pending.settle(),
            Err(e) if e.as_db_error().is_some() => pending.settle(),
            Err(_) => drop(pending),
        }
        committed.map_err(pg)
    }

    /// Runs `call` on a connection of the pool, handed back to the pool only once the
    /// call has finished, and not when it failed for want of an answer. A call given up
    /// (dropped by `store::answered` or by `/readyz`'s shorter bound, or failed by a
    /// bound of its own) may have left a statement unanswered on its connection: the
    /// next call would queue behind it, for ever if its answer was lost on the way.
    /// That statement is cancelled and the connection closed instead; the server rolls
    /// back the call's transaction, releasing its locks.
    async fn leased<T>(&self, call: impl AsyncFnOnce(&mut Object) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let client = self.pool.get().await.map_err(|e| StoreError::Unavailable(explain(&e)))?;
        let mut lease = Lease { client: None, tls: self.tls.clone() };
        let done = call(lease.client.insert(client)).await;
        if !matches!(done, Err(StoreError::Unavailable(_))) {
            lease.give_back();
        }
        done
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        self.leased(async |client| {
            let tx = client.transaction().await.map_err(pg)?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(pg)?;
            let exists: bool =
                tx.query_one("SELECT to_regclass('stackgate_schema') IS NOT NULL", &[]).await.map_err(pg)?.get(0);
            if !exists {
                tx.batch_execute("CREATE TABLE stackgate_schema (version INTEGER NOT NULL)").await.map_err(pg)?;
            }
            let version: i32 =
                tx.query_opt("SELECT version FROM stackgate_schema", &[]).await.map_err(pg)?.map_or(0, |r| r.get(0));
            let version = usize::try_from(version).unwrap_or(0);
            if version > MIGRATIONS.len() {
                return Err(StoreError::Unavailable(format!(
                    "database schema version {version} is newer than this stackgate ({})",
                    MIGRATIONS.len()
                )));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
                tx.batch_execute(sql).await.map_err(pg)?;
                tracing::info!(version = i + 1, "token store migrated");
            }
            let latest = i32::try_from(MIGRATIONS.len()).unwrap_or(i32::MAX);
            tx.execute("DELETE FROM stackgate_schema", &[]).await.map_err(pg)?;
            tx.execute("INSERT INTO stackgate_schema (version) VALUES ($1)", &[&latest]).await.map_err(pg)?;
            tx.commit().await.map_err(pg)
        })
        .await
    }

    async fn query(
        &self,
        sql_where: &str,
        args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<TokenRecord>, StoreError> {
        self.leased(async |client| {
            let sql = format!("SELECT {COLUMNS} FROM stackgate_tokens {sql_where} ORDER BY created_at, uid");
            let rows = client.query(&sql, args).await.map_err(pg)?;
            Ok(rows.iter().filter_map(record).collect())
        })
        .await
    }

    /// The payload other replicas need to re-read one token. Never the secret's hash:
    /// a server logging statements with their parameters would write it to its log.
    fn payload(&self, rec: &TokenRecord) -> String {
        format!("{} {} {}", self.replica, rec.stack, rec.uid)
    }
}

fn pg(e: tokio_postgres::Error) -> StoreError {
    // The driver's text names the failing statement, never a bound value.
    StoreError::Unavailable(explain(&e))
}

/// An error with its causes: the driver's own text is only the kind ("error
/// performing TLS handshake"), and the cause is what names the host and the reason
/// (a certificate refused). Neither carries the URL, so no password reaches a log.
fn explain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

/// Records a change in the transaction that makes it.
async fn write_audit(tx: &deadpool_postgres::Transaction<'_>, entry: &AuditEntry) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO stackgate_token_audit (stack, token_uid, action, actor, at, fields)
         VALUES ($1, $2, $3, $4, $5, $6)",
        &[&entry.stack, &entry.token_uid, &entry.action.name(), &entry.user, &entry.at, &super::fields_json(entry)?],
    )
    .await
    .map(|_| ())
    .map_err(pg)
}

/// A write's outcome: a clash of token names within a stack is its own error.
fn written(outcome: Result<u64, tokio_postgres::Error>) -> Result<(), StoreError> {
    match outcome {
        Ok(_) => Ok(()),
        Err(e) if is_name_clash(&e) => Err(StoreError::DuplicateName),
        Err(e) => Err(pg(e)),
    }
}

fn is_name_clash(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNIQUE_VIOLATION)
        && e.as_db_error().and_then(|d| d.constraint()) == Some("stackgate_tokens_stack_name")
}

fn record(row: &Row) -> Option<TokenRecord> {
    record_in(row, None)
}

/// [`record`], for one row of a read of many when `scopes` is given (they share it).
fn record_in(row: &Row, scopes: Option<&mut ScopeMemo>) -> Option<TokenRecord> {
    let rate = |i: usize| row.get::<_, Option<i32>>(i).and_then(|v| u32::try_from(v).ok());
    Columns {
        uid: row.get(0),
        stack: row.get(1),
        name: row.get(2),
        description: row.get(3),
        secret: row.get(4),
        scope: row.get(5),
        expires_on: row.get(6),
        notify: row.get(7),
        rate: (rate(8), rate(9)),
        created_by: row.get(10),
        updated_by: row.get(11),
        created_at: row.get(12),
        updated_at: row.get(13),
        enabled: row.get(14),
        previous: (row.get(15), row.get(16)),
    }
    .into_record(scopes)
}

fn rate_columns(rec: &TokenRecord) -> (Option<i32>, Option<i32>) {
    let col = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    (rec.rate_limit.map(|r| col(r.read_per_second)), rec.rate_limit.map(|r| col(r.write_per_second)))
}

#[async_trait]
impl TokenStore for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.leased(async |client| client.execute("SELECT 1", &[]).await.map(|_| ()).map_err(pg)).await
    }

    async fn load_all(&self, out: mpsc::Sender<Vec<TokenRecord>>) -> Result<(), StoreError> {
        self.leased(async |client| {
            // Rows are decoded as they arrive (no ORDER BY: the snapshot is a hash index).
            let sql = format!("SELECT {COLUMNS} FROM stackgate_tokens");
            let no_params: [&(dyn tokio_postgres::types::ToSql + Sync); 0] = [];
            let rows = answered(async { client.query_raw(&sql, no_params).await.map_err(pg) }).await?;
            let mut rows = std::pin::pin!(rows);
            let mut batcher = Batcher::new();
            let mut scopes = ScopeMemo::default();
            // No bound on the whole read (a million rows take seconds), but on each row's
            // wait: a server that stops answering mid-read must not hold a re-read, and the
            // writer lock it holds, for ever (see `answered`).
            while let Some(row) = tokio::time::timeout(ANSWER_TIMEOUT, rows.next()).await.map_err(|_| no_answer())? {
                let Some(rec) = record_in(&row.map_err(pg)?, Some(&mut scopes)) else { continue };
                if let Some(full) = batcher.push(rec) {
                    if out.send(full).await.is_err() {
                        // The rest of the rows are still coming on this connection:
                        // failing closes it (see `leased`).
                        return Err(StoreError::Unavailable("the tokens' reader went away".into()));
                    }
                }
            }
            if let Some(rest) = batcher.rest() {
                let _ = out.send(rest).await;
            }
            Ok(())
        })
        .await
    }

    async fn count(&self) -> Result<usize, StoreError> {
        let row = self
            .leased(async |client| client.query_one("SELECT count(*) FROM stackgate_tokens", &[]).await.map_err(pg))
            .await?;
        Ok(usize::try_from(row.get::<_, i64>(0)).unwrap_or(0))
    }

    async fn list(&self, stack: &str) -> Result<Vec<TokenRecord>, StoreError> {
        self.query("WHERE stack = $1", &[&stack]).await
    }

    async fn get(&self, stack: &str, uid: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.query("WHERE stack = $1 AND uid = $2", &[&stack, &uid]).await?.pop())
    }

    async fn create(&self, rec: &TokenRecord, cap: Cap) -> Result<(), StoreError> {
        let scope = super::scope_json(rec)?;
        let (rate_read, rate_write) = rate_columns(rec);
        let expires_on = rec.expires_on.as_ref().map(|e| e.text.as_str());
        let previous = super::previous_columns(rec);
        self.leased(async |client| {
            let tx = client.transaction().await.map_err(pg)?;
            // Replicas creating in the same stack queue here, so count-then-insert is atomic.
            tx.execute("SELECT pg_advisory_xact_lock(hashtext('stackgate:' || $1))", &[&rec.stack])
                .await
                .map_err(pg)?;
            let stored: i64 = tx
                .query_one("SELECT COUNT(*) FROM stackgate_tokens WHERE stack = $1", &[&rec.stack])
                .await
                .map_err(pg)?
                .get(0);
            if stored + i64::from(cap.static_count) >= i64::from(cap.max) {
                return Err(StoreError::CapReached { max: cap.max });
            }
            let inserted = tx
                .execute(
                    &format!(
                        "INSERT INTO stackgate_tokens ({COLUMNS})
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)"
                    ),
                    &[
                        &rec.uid,
                        &rec.stack,
                        &rec.name,
                        &rec.description,
                        &rec.secret_sha256.as_slice(),
                        &scope,
                        &expires_on,
                        &rec.is_email_notification_enabled,
                        &rate_read,
                        &rate_write,
                        &rec.created_by,
                        &rec.updated_by,
                        &rec.created_at,
                        &rec.updated_at,
                        &rec.enabled,
                        &previous.0,
                        &previous.1,
                    ],
                )
                .await;
            written(inserted)?;
            write_audit(&tx, &super::audit_entry(AuditAction::Create, rec, None)).await?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.payload(rec)]).await.map_err(pg)?;
            self.commit(tx, &rec.stack, &rec.uid, Doubt::Create).await
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
        self.leased(async |client| {
            let tx = client.transaction().await.map_err(pg)?;
            let row = tx
                .query_opt(
                    &format!("DELETE FROM stackgate_tokens WHERE stack = $1 AND uid = $2 RETURNING {COLUMNS}"),
                    &[&stack, &uid],
                )
                .await
                .map_err(pg)?;
            let rec = row.as_ref().and_then(record).ok_or(StoreError::NotFound)?;
            tx.execute("DELETE FROM stackgate_expiry_notices WHERE uid = $1", &[&uid]).await.map_err(pg)?;
            let entry = AuditEntry {
                user: by.to_owned(),
                at: at.to_owned(),
                ..super::audit_entry(AuditAction::Delete, &rec, None)
            };
            write_audit(&tx, &entry).await?;
            tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &self.payload(&rec)]).await.map_err(pg)?;
            self.commit(tx, stack, uid, Doubt::Change).await?;
            Ok(rec)
        })
        .await
    }

    async fn audit(&self, stack: &str, skip: u64, limit: u64) -> Result<AuditPage, StoreError> {
        let (skip, limit) = (i64::try_from(skip).unwrap_or(i64::MAX), i64::try_from(limit).unwrap_or(i64::MAX));
        self.leased(async |client| {
            let total: i64 = client
                .query_one("SELECT COUNT(*) FROM stackgate_token_audit WHERE stack = $1", &[&stack])
                .await
                .map_err(pg)?
                .get(0);
            let rows = client
                .query(
                    "SELECT id, stack, token_uid, action, actor, at, fields FROM stackgate_token_audit
                     WHERE stack = $1 ORDER BY id DESC LIMIT $2 OFFSET $3",
                    &[&stack, &limit, &skip],
                )
                .await
                .map_err(pg)?;
            let entries = rows
                .iter()
                .filter_map(|row| {
                    AuditColumns {
                        id: row.get(0),
                        stack: row.get(1),
                        token_uid: row.get(2),
                        action: row.get(3),
                        user: row.get(4),
                        at: row.get(5),
                        fields: row.get(6),
                    }
                    .into_entry()
                })
                .collect();
            Ok(AuditPage { entries, total: u64::try_from(total).unwrap_or(0) })
        })
        .await
    }

    async fn notified_at(&self, uid: &str, expires_at: i64, channel: &str) -> Result<Option<i64>, StoreError> {
        let row = self
            .leased(async |client| {
                const SQL: &str = "SELECT notified_at FROM stackgate_expiry_notices
                                   WHERE uid = $1 AND expires_at = $2 AND channel = $3";
                client.query_opt(SQL, &[&uid, &expires_at, &channel]).await.map_err(pg)
            })
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    async fn first_notice(&self, uid: &str, expires_at: i64) -> Result<Option<i64>, StoreError> {
        let row = self
            .leased(async |client| {
                client
                    .query_one(
                        "SELECT MIN(notified_at) FROM stackgate_expiry_notices WHERE uid = $1 AND expires_at = $2",
                        &[&uid, &expires_at],
                    )
                    .await
                    .map_err(pg)
            })
            .await?;
        Ok(row.get(0))
    }

    async fn record_last_used(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        let (uids, times): (Vec<&str>, Vec<i64>) = used.iter().map(|(u, t)| (u.as_str(), *t)).unzip();
        // One statement for the whole batch; GREATEST keeps the latest of all replicas'.
        self.leased(async |client| {
            client
                .execute(
                    "UPDATE stackgate_tokens t SET last_used_at = GREATEST(COALESCE(t.last_used_at, u.at), u.at)
                 FROM UNNEST($1::text[], $2::bigint[]) AS u(uid, at) WHERE t.uid = u.uid",
                    &[&uids, &times],
                )
                .await
                .map(|_| ())
                .map_err(pg)
        })
        .await
    }

    async fn last_used(&self, stack: &str) -> Result<HashMap<String, i64>, StoreError> {
        let rows = self
            .leased(async |client| {
                client
                    .query(
                        "SELECT uid, last_used_at FROM stackgate_tokens WHERE stack = $1 AND last_used_at IS NOT NULL",
                        &[&stack],
                    )
                    .await
                    .map_err(pg)
            })
            .await?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1))).collect())
    }

    async fn mark_notified(&self, uid: &str, expires_at: i64, channel: &str, at: i64) -> Result<(), StoreError> {
        self.leased(async |client| {
            client
                .execute(
                    "INSERT INTO stackgate_expiry_notices (uid, expires_at, channel, notified_at)
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                    &[&uid, &expires_at, &channel, &at],
                )
                .await
                .map(|_| ())
                .map_err(pg)
        })
        .await
    }

    async fn try_lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        let row = self
            .leased(async |client| {
                client
                    .query_opt(
                        "INSERT INTO stackgate_leases (name, holder, until)
                 VALUES ($1, $2, now() + make_interval(secs => $3::bigint / 1000.0))
                 ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, until = EXCLUDED.until
                 WHERE stackgate_leases.holder = EXCLUDED.holder OR stackgate_leases.until < now()
                 RETURNING holder",
                        &[&name, &holder, &ttl_ms],
                    )
                    .await
                    .map_err(pg)
            })
            .await?;
        Ok(row.is_some())
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<StoreEvent>> {
        self.events.lock().ok()?.take()
    }
}

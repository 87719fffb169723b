//! Token persistence behind one small trait, so other engines can be added beside
//! the embedded default ([`sqlite::SqliteStore`]).
//!
//! The store is the source of truth for tokens created through the API; the request
//! path never reads it (it reads the snapshot, rebuilt after every committed change).

pub mod answered;
pub mod pg_tls;
pub mod postgres;
pub mod sqlite;

use crate::error::FieldErrors;
use crate::token::{read_expiry, Origin, RateLimit, ScopeEntry, TokenRecord};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The stack already has `max` tokens (static ones included).
    #[error("token limit of {max} per stack reached")]
    CapReached { max: u32 },
    /// Another token of the stack has this name.
    #[error("duplicate token name")]
    DuplicateName,
    #[error("token not found")]
    NotFound,
    /// The change handed to [`TokenStore::modify`] refused the record as it stood in the
    /// store; nothing was written.
    #[error("invalid token change")]
    Invalid(FieldErrors),
    /// The engine is unreachable, failed, or did not answer in time; nothing was
    /// changed, unless a commit it did not answer in time still completes.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// The per-stack cap, as the caller knows it from the config.
#[derive(Debug, Clone)]
pub struct Cap {
    pub max: u32,
    /// Static (config) tokens of the stack, which count towards the cap.
    pub static_count: u32,
}

/// A place to keep token records (never secrets, only their SHA-256).
#[async_trait]
pub trait TokenStore: Send + Sync + 'static {
    /// Whether the store answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;
    /// Every stored token, sent to `out` in batches as the engine reads them (in no
    /// particular order), so that a caller can build from a million tokens without
    /// holding them all as records. Stops early, without an error, once `out`'s
    /// receiver is gone.
    async fn load_all(&self, out: mpsc::Sender<Vec<TokenRecord>>) -> Result<(), StoreError>;
    /// How many tokens are stored (a hint for sizing what [`TokenStore::load_all`] fills).
    async fn count(&self) -> Result<usize, StoreError>;
    /// Stored tokens of one stack.
    async fn list(&self, stack: &str) -> Result<Vec<TokenRecord>, StoreError>;
    async fn get(&self, stack: &str, uid: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Inserts a token unless the cap or a name clash forbids it, atomically: two
    /// concurrent creates at the cap cannot both succeed.
    ///
    /// Every change (create, modify, rotate, delete) writes its [`AuditEntry`] in the
    /// same transaction, so the trail and the tokens cannot disagree.
    async fn create(&self, rec: &TokenRecord, cap: Cap) -> Result<(), StoreError>;
    /// Changes one token as a read-modify-write in a single transaction: reads the
    /// current record with a write lock on it, hands it to `edit`, writes back what
    /// `edit` returns (its mutable fields: never the uid, stack or secret) and returns
    /// that. Concurrent changes of the same token, from this process or another sharing
    /// the store, queue behind each other, so each one starts from the record the
    /// previous one committed and none undoes another (a blind write of a record read
    /// earlier would: DESIGN.md section 4). An `edit` that fails leaves the token as it
    /// was and its errors come back as [`StoreError::Invalid`].
    async fn modify(&self, stack: &str, uid: &str, edit: Edit) -> Result<TokenRecord, StoreError>;
    /// Like [`TokenStore::modify`], but `edit` may also replace the secret hash and the
    /// previous secret (regeneration): the only way a stored secret changes, so an
    /// ordinary update can never swap a secret by mistake.
    async fn rotate(&self, stack: &str, uid: &str, edit: Edit) -> Result<TokenRecord, StoreError>;
    /// Deletes a token and returns what it was; `by` (a user uid) and `at` (RFC 3339)
    /// go into the audit trail.
    async fn delete(&self, stack: &str, uid: &str, by: &str, at: &str) -> Result<TokenRecord, StoreError>;
    /// A page of the stack's audit trail, newest first: `skip` entries left out, at most
    /// `limit` returned, with the number of entries the stack has in all.
    async fn audit(&self, stack: &str, skip: u64, limit: u64) -> Result<AuditPage, StoreError>;
    /// When the expiry notice for (`uid`, `expires_at`) went out on `channel`, if it did.
    async fn notified_at(&self, uid: &str, expires_at: i64, channel: &str) -> Result<Option<i64>, StoreError>;
    /// When the first notice for (`uid`, `expires_at`) went out on any channel.
    async fn first_notice(&self, uid: &str, expires_at: i64) -> Result<Option<i64>, StoreError>;
    /// Records that a notice went out, so no restart sends it again.
    async fn mark_notified(&self, uid: &str, expires_at: i64, channel: &str, at: i64) -> Result<(), StoreError>;
    /// Records when tokens last authenticated, `(uid, unix seconds)`, keeping the later
    /// of the stored and the given time (replicas flush in any order). Uids without a
    /// stored row (config tokens, deleted ones) are skipped. It is not a token change:
    /// no audit entry, no change notification, `updated_at` untouched.
    async fn record_last_used(&self, used: &[(String, i64)]) -> Result<(), StoreError>;
    /// The recorded last use of the stack's stored tokens, by uid (tokens never used
    /// are absent).
    async fn last_used(&self, stack: &str) -> Result<HashMap<String, i64>, StoreError>;
    /// Takes or renews the lease `name` for `holder` for `ttl`; `true` while `holder`
    /// holds it. Replicas sharing a store use it so one of them, not all, runs a duty
    /// such as sending expiry notices. A store only one process uses always says yes.
    async fn try_lead(&self, _name: &str, _holder: &str, _ttl: Duration) -> Result<bool, StoreError> {
        Ok(true)
    }
    /// Changes other processes make to a shared store, as they commit. `None` for a
    /// store only this process writes (its own changes are applied as they commit).
    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<StoreEvent>> {
        None
    }
}

/// The stored tokens `keep` accepts, read with [`TokenStore::load_all`] (only those are
/// held: the notifier keeps the few with a notice due, tests keep everything).
pub async fn load_matching(
    store: &dyn TokenStore,
    mut keep: impl FnMut(&TokenRecord) -> bool,
) -> Result<Vec<TokenRecord>, StoreError> {
    let (tx, mut rx) = mpsc::channel::<Vec<TokenRecord>>(2);
    let receive = async {
        let mut kept = Vec::new();
        while let Some(batch) = rx.recv().await {
            kept.extend(batch.into_iter().filter(|rec| keep(rec)));
        }
        kept
    };
    let (loaded, kept) = tokio::join!(store.load_all(tx), receive);
    loaded.map(|()| kept)
}

/// Gathers records into the batches [`TokenStore::load_all`] sends.
struct Batcher(Vec<TokenRecord>);

impl Batcher {
    /// Records per batch: large enough that handing a batch over costs nothing next
    /// to reading it, small enough that the batches in flight stay a few MiB.
    const SIZE: usize = 1024;

    fn new() -> Self {
        Batcher(Vec::with_capacity(Self::SIZE))
    }

    /// Adds a record; returns a full batch to send.
    fn push(&mut self, rec: TokenRecord) -> Option<Vec<TokenRecord>> {
        self.0.push(rec);
        (self.0.len() == Self::SIZE).then(|| std::mem::replace(&mut self.0, Vec::with_capacity(Self::SIZE)))
    }

    /// What is left to send once the engine has read everything.
    fn rest(self) -> Option<Vec<TokenRecord>> {
        (!self.0.is_empty()).then_some(self.0)
    }
}

/// What [`TokenStore::modify`] does to a token: the stored record in, the record to store
/// (or per-field errors) out. It runs inside the store's transaction, so it must be
/// quick and must not block on anything but the CPU.
pub type Edit = Box<dyn FnOnce(TokenRecord) -> Result<TokenRecord, FieldErrors> + Send>;

/// One recorded change of a token: who changed what, when. Every change (create,
/// update, regenerate, delete) writes one in the transaction that makes the change, so
/// the trail can neither miss a committed change nor show one that was rolled back. It
/// names fields, never values: no secret or hash can reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Increasing in the order the changes were written.
    pub id: i64,
    pub stack: String,
    pub token_uid: String,
    pub action: AuditAction,
    /// The user uid that made the change.
    pub user: String,
    /// RFC 3339.
    pub at: String,
    /// Names of the API fields that changed (`token` for a new secret).
    pub fields: Vec<String>,
}

/// What a change did to a token (a suspension or resume is an update of `enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Create,
    Update,
    Regenerate,
    Delete,
}

impl AuditAction {
    /// The name stored and shown.
    pub fn name(self) -> &'static str {
        match self {
            AuditAction::Create => "create",
            AuditAction::Update => "update",
            AuditAction::Regenerate => "regenerate",
            AuditAction::Delete => "delete",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [AuditAction::Create, AuditAction::Update, AuditAction::Regenerate, AuditAction::Delete]
            .into_iter()
            .find(|a| a.name() == text)
    }
}

/// A page of a stack's audit trail and the stack's total number of entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    pub total: u64,
}

/// The audit entry of a change, before the engine numbers it.
fn audit_entry(action: AuditAction, rec: &TokenRecord, before: Option<&TokenRecord>) -> AuditEntry {
    let (user, at) = match action {
        AuditAction::Create => (&rec.created_by, &rec.created_at),
        _ => (&rec.updated_by, &rec.updated_at),
    };
    let fields = match action {
        AuditAction::Create | AuditAction::Update => changed_fields(before, rec),
        AuditAction::Regenerate => vec!["token".to_owned()],
        AuditAction::Delete => Vec::new(),
    };
    AuditEntry {
        id: 0,
        stack: rec.stack.clone(),
        token_uid: rec.uid.clone(),
        action,
        user: user.clone(),
        at: at.clone(),
        fields,
    }
}

/// The API fields that differ between `before` and `after`; for a new token
/// (`before` = `None`), those it was given a value in.
fn changed_fields(before: Option<&TokenRecord>, after: &TokenRecord) -> Vec<String> {
    let flags = match before {
        Some(b) => [
            ("name", b.name != after.name),
            ("description", b.description != after.description),
            ("scope", b.scope != after.scope),
            ("expires_on", b.expires_on != after.expires_on),
            ("is_email_notification_enabled", b.is_email_notification_enabled != after.is_email_notification_enabled),
            ("rate_limit", b.rate_limit != after.rate_limit),
            ("enabled", b.enabled != after.enabled),
        ],
        None => [
            ("name", true),
            ("description", !after.description.is_empty()),
            ("scope", true),
            ("expires_on", after.expires_on.is_some()),
            ("is_email_notification_enabled", after.is_email_notification_enabled),
            ("rate_limit", after.rate_limit.is_some()),
            ("enabled", !after.enabled),
        ],
    };
    flags.into_iter().filter(|(_, changed)| *changed).map(|(name, _)| name.to_owned()).collect()
}

/// An audit row as every SQL engine stores it (fields as a JSON array).
struct AuditColumns {
    id: i64,
    stack: String,
    token_uid: String,
    action: String,
    user: String,
    at: String,
    fields: String,
}

impl AuditColumns {
    fn into_entry(self) -> Option<AuditEntry> {
        let (Some(action), Ok(fields)) =
            (AuditAction::parse(&self.action), serde_json::from_str::<Vec<String>>(&self.fields))
        else {
            tracing::error!(audit.id = self.id, "unreadable audit row skipped");
            return None;
        };
        Some(AuditEntry {
            id: self.id,
            stack: self.stack,
            token_uid: self.token_uid,
            action,
            user: self.user,
            at: self.at,
            fields,
        })
    }
}

fn fields_json(entry: &AuditEntry) -> Result<String, StoreError> {
    serde_json::to_string(&entry.fields).map_err(|e| unavailable(&e))
}

/// A change to a shared store that this process did not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// The token (`stack`, `uid`) was created, updated or deleted: read it again (gone
    /// means deleted).
    Changed { stack: String, uid: String },
    /// Changes may have been missed (first connect, reconnect, periodic backstop):
    /// re-read every token.
    Resync,
    /// This replica's create of (`stack`, `uid`) was given up and answered 503, so its
    /// secret reached no one; its commit may have landed (or may land yet). Delete the
    /// token if it is there: the answer said nothing was made.
    Orphaned { stack: String, uid: String },
}

/// A random id naming this store handle among replicas (notifications, leases).
pub fn process_id() -> String {
    let mut bytes = [0u8; 8];
    // Without randomness the time still tells replicas apart well enough.
    if getrandom::getrandom(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        bytes = (nanos.as_nanos() as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    hex::encode(bytes)
}

fn unavailable(e: &dyn std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Runs `edit` on the stored record and keeps what it may not change (uid, stack,
/// creation, and the secrets unless `rotating`), so the record returned is exactly the
/// row the engine writes.
fn apply_edit(stored: TokenRecord, edit: Edit, rotating: bool) -> Result<TokenRecord, StoreError> {
    let mut rec = edit(stored.clone()).map_err(StoreError::Invalid)?;
    rec.uid = stored.uid;
    rec.stack = stored.stack;
    if !rotating {
        rec.secret_sha256 = stored.secret_sha256;
        rec.previous_secret = stored.previous_secret;
    }
    rec.created_by = stored.created_by;
    rec.created_at = stored.created_at;
    rec.expiry_notified_at = None;
    rec.origin = Origin::Store;
    Ok(rec)
}

/// Whether an edit leaves every field the API shows as it was (`PUT` with `{"token":{}}`,
/// or the fields as they stand): nothing is written, `updated_at` stays, and no audit
/// entry records a change that was none.
fn changes_nothing(before: &TokenRecord, after: &TokenRecord, rotating: bool) -> bool {
    !rotating && changed_fields(Some(before), after).is_empty()
}

/// The previous secret as its two columns (hash, end), both null when there is none.
fn previous_columns(rec: &TokenRecord) -> (Option<Vec<u8>>, Option<i64>) {
    (rec.previous_secret.map(|p| p.sha256.to_vec()), rec.previous_secret.map(|p| p.until))
}

fn scope_json(rec: &TokenRecord) -> Result<String, StoreError> {
    serde_json::to_string(&*rec.scope).map_err(|e| unavailable(&e))
}

/// The scopes a read of many rows has parsed, by their stored text. Stored tokens come
/// in bulk with a handful of distinct scopes: each text is parsed once and its entries
/// shared by every record that stores it (parsing every row's JSON was about a tenth of
/// a million-token start-up). Bounded: past [`ScopeMemo::MAX`] distinct texts it starts
/// over, so a store of all-different scopes costs a lookup per row and no more memory.
#[derive(Default)]
pub(crate) struct ScopeMemo(HashMap<Box<str>, Arc<[ScopeEntry]>>);

impl ScopeMemo {
    const MAX: usize = 256;

    fn parse(&mut self, text: &str) -> serde_json::Result<Arc<[ScopeEntry]>> {
        if let Some(known) = self.0.get(text) {
            return Ok(Arc::clone(known));
        }
        let parsed: Arc<[ScopeEntry]> = serde_json::from_str::<Vec<ScopeEntry>>(text)?.into();
        if self.0.len() >= Self::MAX {
            self.0.clear();
        }
        self.0.insert(text.into(), Arc::clone(&parsed));
        Ok(parsed)
    }
}

/// A token row as every SQL engine stores it (scope as JSON text, expiry as the date
/// the user chose); decoded in one place so the engines cannot disagree.
struct Columns {
    uid: String,
    stack: String,
    name: String,
    description: String,
    secret: Vec<u8>,
    scope: String,
    expires_on: Option<String>,
    notify: bool,
    rate: (Option<u32>, Option<u32>),
    created_by: String,
    updated_by: String,
    created_at: String,
    updated_at: String,
    enabled: bool,
    /// The previous secret's hash and end (both or neither).
    previous: (Option<Vec<u8>>, Option<i64>),
}

impl Columns {
    /// The record, or `None` (logged) for a row that no longer parses. `scopes` is the
    /// memo of the read of many rows this row is part of (none for a single row).
    fn into_record(self, scopes: Option<&mut ScopeMemo>) -> Option<TokenRecord> {
        let scope = match scopes {
            Some(memo) => memo.parse(&self.scope),
            None => serde_json::from_str::<Vec<ScopeEntry>>(&self.scope).map(Arc::from),
        };
        let (Ok(secret_sha256), Ok(scope)) = (<[u8; 32]>::try_from(self.secret), scope) else {
            tracing::error!(token.uid = %self.uid, "unreadable token row skipped");
            return None;
        };
        let Ok(expires_on) = self.expires_on.map(|e| read_expiry(&e)).transpose() else {
            tracing::error!(token.uid = %self.uid, "token row with unreadable expiry skipped");
            return None;
        };
        Some(TokenRecord {
            uid: self.uid,
            stack: self.stack,
            name: self.name,
            description: self.description,
            secret_sha256,
            scope,
            expires_on,
            is_email_notification_enabled: self.notify,
            rate_limit: match self.rate {
                (Some(read_per_second), Some(write_per_second)) => {
                    Some(RateLimit { read_per_second, write_per_second })
                }
                _ => None,
            },
            created_by: self.created_by,
            updated_by: self.updated_by,
            created_at: self.created_at,
            updated_at: self.updated_at,
            expiry_notified_at: None,
            enabled: self.enabled,
            previous_secret: match self.previous {
                (Some(hash), Some(until)) => {
                    <[u8; 32]>::try_from(hash).ok().map(|sha256| crate::token::PreviousSecret { sha256, until })
                }
                _ => None,
            },
            origin: Origin::Store,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::ScopeMemo;

    /// Text that does not parse is an error and is not kept; however many distinct
    /// texts come, the memo holds at most `MAX`, and each text gets its own entries.
    #[test]
    fn the_scope_memo_keeps_only_what_parsed_and_stays_bounded() {
        let mut memo = ScopeMemo::default();
        assert!(memo.parse("[{\"module\": ").is_err());
        assert!(memo.0.is_empty());
        for i in 0..3 * ScopeMemo::MAX {
            let text = format!("[{{\"module\":\"m{i}\",\"acl\":{{\"read\":true}}}}]");
            let scope = memo.parse(&text).unwrap();
            assert_eq!(scope[0].module, format!("m{i}"));
            assert!(std::sync::Arc::ptr_eq(&scope, &memo.parse(&text).unwrap()), "{i}: parsed again");
            assert!(memo.0.len() <= ScopeMemo::MAX);
        }
    }
}

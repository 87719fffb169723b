//! Token persistence behind one small trait, so other engines can be added beside
//! the embedded default ([`sqlite::SqliteStore`]).
//!
//! The store is the source of truth for tokens created through the API; the request
//! path never reads it (it reads the snapshot, rebuilt after every committed change).

pub mod sqlite;

use crate::token::TokenRecord;
use async_trait::async_trait;

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
    /// The engine is unreachable or failed; nothing was changed.
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
    /// Every stored token (to build a snapshot).
    async fn load_all(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Stored tokens of one stack.
    async fn list(&self, stack: &str) -> Result<Vec<TokenRecord>, StoreError>;
    async fn get(&self, stack: &str, uid: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// Inserts a token unless the cap or a name clash forbids it, atomically: two
    /// concurrent creates at the cap cannot both succeed.
    async fn create(&self, rec: &TokenRecord, cap: Cap) -> Result<(), StoreError>;
    /// Replaces a token's mutable fields (not its secret).
    async fn update(&self, rec: &TokenRecord) -> Result<(), StoreError>;
    /// Deletes a token and returns what it was.
    async fn delete(&self, stack: &str, uid: &str) -> Result<TokenRecord, StoreError>;
    /// When the expiry notice for (`uid`, `expires_at`) went out on `channel`, if it did.
    async fn notified_at(&self, uid: &str, expires_at: i64, channel: &str) -> Result<Option<i64>, StoreError>;
    /// When the first notice for (`uid`, `expires_at`) went out on any channel.
    async fn first_notice(&self, uid: &str, expires_at: i64) -> Result<Option<i64>, StoreError>;
    /// Records that a notice went out, so no restart sends it again.
    async fn mark_notified(&self, uid: &str, expires_at: i64, channel: &str, at: i64) -> Result<(), StoreError>;
}

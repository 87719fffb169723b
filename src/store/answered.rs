//! A time bound on every call to a store on the network: [`Answered`] wraps a
//! [`TokenStore`] and answers [`StoreError::Unavailable`] for a call the store has not
//! answered within [`ANSWER_TIMEOUT`].
//!
//! A database that keeps its connections open but answers nothing (a hung server, a
//! peer whose packets are dropped) is not a refused connection: without a bound, a
//! token-API request waited on it for ever, and so did everything queued behind the
//! gateway's writer lock (reloads, the next request, a re-read). With it, each of them
//! gets its 503 and the gateway keeps serving its last snapshot, as for a database that
//! refuses connections. A call given up on may still complete on the server later (a
//! commit sent before the bound); it is then applied from the change notification like
//! any other replica's change.

use super::{AuditPage, Cap, Edit, StoreError, StoreEvent, TokenStore};
use crate::token::TokenRecord;
use async_trait::async_trait;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long one call (or, for [`TokenStore::load_all`], one row of its read) may wait
/// for the store's answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What a call the store has not answered in time fails with.
pub fn no_answer() -> StoreError {
    StoreError::Unavailable(format!("the store did not answer within {} s", ANSWER_TIMEOUT.as_secs()))
}

/// `call`, or [`no_answer`] once [`ANSWER_TIMEOUT`] has passed.
pub async fn answered<T>(call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    tokio::time::timeout(ANSWER_TIMEOUT, call).await.unwrap_or_else(|_| Err(no_answer()))
}

/// A store whose every call is answered within [`ANSWER_TIMEOUT`], or failed. Its
/// [`TokenStore::load_all`] is the inner store's: a read of a million tokens takes
/// longer than the bound, so the inner store bounds the wait for each row instead.
pub struct Answered<S>(pub S);

#[async_trait]
impl<S: TokenStore> TokenStore for Answered<S> {
    async fn ping(&self) -> Result<(), StoreError> {
        answered(self.0.ping()).await
    }

    async fn load_all(&self, out: mpsc::Sender<Vec<TokenRecord>>) -> Result<(), StoreError> {
        self.0.load_all(out).await
    }

    async fn count(&self) -> Result<usize, StoreError> {
        answered(self.0.count()).await
    }

    async fn list(&self, stack: &str) -> Result<Vec<TokenRecord>, StoreError> {
        answered(self.0.list(stack)).await
    }

    async fn get(&self, stack: &str, uid: &str) -> Result<Option<TokenRecord>, StoreError> {
        answered(self.0.get(stack, uid)).await
    }

    async fn create(&self, rec: &TokenRecord, cap: Cap) -> Result<(), StoreError> {
        answered(self.0.create(rec, cap)).await
    }

    async fn modify(&self, stack: &str, uid: &str, edit: Edit) -> Result<TokenRecord, StoreError> {
        answered(self.0.modify(stack, uid, edit)).await
    }

    async fn rotate(&self, stack: &str, uid: &str, edit: Edit) -> Result<TokenRecord, StoreError> {
        answered(self.0.rotate(stack, uid, edit)).await
    }

    async fn delete(&self, stack: &str, uid: &str, by: &str, at: &str) -> Result<TokenRecord, StoreError> {
        answered(self.0.delete(stack, uid, by, at)).await
    }

    async fn audit(&self, stack: &str, skip: u64, limit: u64) -> Result<AuditPage, StoreError> {
        answered(self.0.audit(stack, skip, limit)).await
    }

    async fn notified_at(&self, uid: &str, expires_at: i64, channel: &str) -> Result<Option<i64>, StoreError> {
        answered(self.0.notified_at(uid, expires_at, channel)).await
    }

    async fn first_notice(&self, uid: &str, expires_at: i64) -> Result<Option<i64>, StoreError> {
        answered(self.0.first_notice(uid, expires_at)).await
    }

    async fn mark_notified(&self, uid: &str, expires_at: i64, channel: &str, at: i64) -> Result<(), StoreError> {
        answered(self.0.mark_notified(uid, expires_at, channel, at)).await
    }

    async fn record_last_used(&self, used: &[(String, i64)]) -> Result<(), StoreError> {
        answered(self.0.record_last_used(used)).await
    }

    async fn last_used(&self, stack: &str) -> Result<HashMap<String, i64>, StoreError> {
        answered(self.0.last_used(stack)).await
    }

    async fn try_lead(&self, name: &str, holder: &str, ttl: Duration) -> Result<bool, StoreError> {
        answered(self.0.try_lead(name, holder, ttl)).await
    }

    fn subscribe(&self) -> Option<mpsc::UnboundedReceiver<StoreEvent>> {
        self.0.subscribe()
    }
}

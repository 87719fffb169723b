//! The token-management API (DESIGN.md section 4), served by stackgate itself:
//! `GET|POST /v3/stacks/management_tokens`, `GET|PUT|DELETE .../{uid}`,
//! `POST .../{uid}/regenerate`, `GET .../audit`.
//!
//! Authenticated by `api_key` + `authtoken` of a configured owner or admin of the
//! stack. Every change is committed to the store first, then applied to the snapshot,
//! under one writer lock, so the next request on any connection sees it. An update is
//! applied to the record inside the store's transaction ([`crate::store::TokenStore::modify`]),
//! so concurrent updates, here or on another replica, never undo each other.

mod input;

use crate::config::Stack;
use crate::error::{BadRequest, Denial, FieldErrors, GatewayError};
use crate::gateway::{Change, Gateway};
use crate::pipeline::auth::{API_KEY, AUTHTOKEN};
use crate::proxy::ClientBody;
use crate::proxy::{self, Body};
use crate::server::{BodyCap, Share};
use crate::store::{Cap, Edit, StoreError};
use crate::token::{hash_secret, new_secret, new_uid, Origin, PreviousSecret, TokenRecord};
use crate::usage::{Outcome, Usage};
use bytes::Bytes;
use http::request::Parts;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Token bodies are small; anything bigger is refused before parsing.
const MAX_BODY: usize = 64 * 1024;

/// Serves one token-API request. `path` is the canonical path. The body is taken out
/// of `body` only when it is read; a refused request's is left for the caller to drain.
/// Every answer it serves is `Cache-Control: no-store`: a create or regenerate carries a
/// secret once, and lists name a stack's credentials; no cache between the client and
/// the gateway may keep either.
pub async fn handle(
    gw: &Arc<Gateway>,
    parts: &Parts,
    path: &str,
    body: &mut Option<ClientBody>,
    client: std::net::IpAddr,
) -> Result<Response<Body>, GatewayError> {
    let mut resp = serve(gw, parts, path, body, client).await?;
    resp.headers_mut().insert(hyper::header::CACHE_CONTROL, hyper::header::HeaderValue::from_static("no-store"));
    Ok(resp)
}

async fn serve(
    gw: &Arc<Gateway>,
    parts: &Parts,
    path: &str,
    body: &mut Option<ClientBody>,
    client: std::net::IpAddr,
) -> Result<Response<Body>, GatewayError> {
    let snap = gw.snapshot();
    let config = Arc::clone(&snap.config);
    let (stack, user) = authenticate(gw, &config, parts, client)?;
    let rest = path.strip_prefix("/v3/stacks/management_tokens").and_then(|rest| rest.strip_prefix('/'));
    // `{uid}` or `{uid}/{action}` (classify lets only `regenerate` through).
    let (uid, action) = match rest.map(|r| r.split_once('/')) {
        None => (None, None),
        Some(None) => (rest, None),
        Some(Some((uid, action))) => (Some(uid), Some(action)),
    };
    // HEAD reads as GET (its body is left out where the answer is written).
    let read = parts.method == Method::GET || parts.method == Method::HEAD;
    // A body read here holds its share of what token-API bodies may hold together
    // (`max_inspected_total`, apart from the bodies the rules read) until the answer.
    let mut share = gw.token_api_bodies().share(holder(&user));
    let cap = BodyCap { total: snap.settings.max_inspected_total, body: MAX_BODY as u64 };
    let reading = Reading { share: &mut share, cap, parts };
    match (&parts.method, uid, action) {
        (_, None, None) if read => list(gw, stack).await,
        (_, Some("audit"), None) if read => audit(gw, stack, parts.uri.query()).await,
        (_, Some(uid), None) if read => show(gw, stack, uid).await,
        (&Method::POST, None, None) => create(gw, stack, &user, read_body(reading, body).await?).await,
        (&Method::PUT, Some(uid), None) => update(gw, stack, &user, uid, read_body(reading, body).await?).await,
        (&Method::DELETE, Some(uid), None) => delete(gw, stack, &user, uid).await,
        (&Method::POST, Some(uid), Some("regenerate")) => {
            regenerate(gw, stack, &user, uid, read_optional_body(reading, body).await?).await
        }
        _ => Err(GatewayError::NotFound),
    }
}

/// What reading a token-API body needs: the request's head, and the share of the
/// buffered-body budget it takes from.
struct Reading<'a> {
    share: &'a mut Share,
    cap: BodyCap,
    parts: &'a Parts,
}

/// A user as a holder of the token-API body budget.
fn holder(user: &str) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(user)
}

/// `api_key` -> stack (412), `authtoken` -> configured user (401), the guard (429 while
/// the address cools down and the user is none of its known ones), role owner/admin (403).
fn authenticate<'c>(
    gw: &Gateway,
    config: &'c crate::config::Config,
    parts: &Parts,
    client: std::net::IpAddr,
) -> Result<(&'c Stack, String), GatewayError> {
    let h = &parts.headers;
    for name in [&API_KEY, &AUTHTOKEN] {
        if h.get_all(name).iter().nth(1).is_some() {
            return Err(GatewayError::BadRequest(BadRequest::InvalidHeader));
        }
    }
    let api_key = h.get(API_KEY).and_then(|v| v.to_str().ok()).ok_or(GatewayError::StackNotFound)?;
    let stack = config.stacks.iter().find(|s| s.api_key == api_key).ok_or(GatewayError::StackNotFound)?;
    let unauthenticated = GatewayError::Unauthenticated { expired: false };
    let authtoken = h.get(AUTHTOKEN).ok_or(unauthenticated.clone())?;
    let snap = gw.snapshot();
    let digest = hash_secret(authtoken.as_bytes());
    let user = snap.user(&digest).ok_or(unauthenticated)?;
    // A cooling address is answered only on the credentials it had at work (see
    // `guard`), before the role tells a right guess from a wrong one.
    let (guard, now) = (gw.guard(), gw.clock().now());
    gw.admit(client, &config.guard, now, Some(guard.known(crate::guard::Kind::User, &digest, api_key.as_bytes())))?;
    // The console's sign-in with this authtoken proves nothing more: at work there too.
    guard.remember(client, now, guard.known(crate::guard::Kind::Console, &digest, b""));
    match stack.members.get(user) {
        Some(role) if role.manages_tokens() => Ok((stack, user.to_owned())),
        _ => Err(GatewayError::Forbidden(Denial::Role)),
    }
}

/// Reads a POST or PUT body (at most [`MAX_BODY`]) and checks that it is declared as
/// JSON. The body is read before the media type is judged, so a refused request leaves
/// nothing unread on its connection.
async fn read_body(reading: Reading<'_>, body: &mut Option<ClientBody>) -> Result<Bytes, GatewayError> {
    let parts = reading.parts;
    let bytes = read_bounded(reading, body).await?;
    if crate::json::declares_json(&parts.headers) {
        Ok(bytes)
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

/// Reads a body that may be empty (regenerate): an empty one needs no Content-Type,
/// anything else (whitespace too: only an empty body is no body) must be declared JSON
/// like every other token-API body.
async fn read_optional_body(reading: Reading<'_>, body: &mut Option<ClientBody>) -> Result<Bytes, GatewayError> {
    let parts = reading.parts;
    let bytes = read_bounded(reading, body).await?;
    if bytes.is_empty() || crate::json::declares_json(&parts.headers) {
        Ok(bytes)
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

async fn read_bounded(reading: Reading<'_>, body: &mut Option<ClientBody>) -> Result<Bytes, GatewayError> {
    let declared = reading
        .parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY) {
        return Err(GatewayError::PayloadTooLarge);
    }
    // What the body may hold, taken up front (the most, when it states no length).
    let most = declared.unwrap_or(MAX_BODY) as u64;
    if !reading.share.grow(most, reading.cap) {
        return Err(GatewayError::Busy);
    }
    let body = body.take().unwrap_or(ClientBody::Empty);
    match tokio::time::timeout(std::time::Duration::from_secs(30), Limited::new(body, MAX_BODY).collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(GatewayError::PayloadTooLarge),
        // A client that stops sending is slow, not malformed (the forty-first probe):
        // 408 for the whole body's bound as for the connection's idle limit.
        Ok(Err(e)) => Err(crate::proxy::unreadable(&*e)),
        Err(_) => Err(GatewayError::RequestTimeout),
    }
}

/// A stack's cap as `config` states it: the organisation's `max_tokens_per_stack`, and
/// the stack's static tokens, which count towards it (none may be created on a stack
/// the config no longer has).
fn cap_of(config: &crate::config::Config, api_key: &str) -> Cap {
    let stack = config.stacks.iter().find(|s| s.api_key == api_key);
    let org = stack.and_then(|s| config.organizations.iter().find(|o| o.uid == s.organization));
    match (stack, org) {
        (Some(stack), Some(org)) => {
            Cap { max: org.max_tokens_per_stack, static_count: u32::try_from(stack.tokens.len()).unwrap_or(u32::MAX) }
        }
        _ => Cap { max: 0, static_count: 0 },
    }
}

fn store_error(e: StoreError) -> GatewayError {
    match e {
        StoreError::NotFound => GatewayError::TokenNotFound,
        StoreError::CapReached { max } => {
            field_error("token", &format!("a stack can have at most {max} management tokens."))
        }
        StoreError::DuplicateName => field_error("name", "is already used by another token of this stack."),
        StoreError::Invalid(errors) => GatewayError::Unprocessable(errors),
        StoreError::Unavailable(msg) => {
            tracing::error!(error = %msg, "token store unavailable");
            GatewayError::Unavailable
        }
    }
}

fn field_error(field: &str, msg: &str) -> GatewayError {
    let mut errors = FieldErrors::new();
    errors.insert(field.into(), vec![msg.into()]);
    GatewayError::Unprocessable(errors)
}

/// `now` (Unix seconds) as the API writes times: RFC 3339, UTC.
pub(crate) fn now_rfc3339(now: i64) -> String {
    OffsetDateTime::from_unix_timestamp(now).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// A record as the API shows it (never the secret or its hash), with its `usage`.
fn to_json(rec: &TokenRecord, usage: Value) -> Value {
    let ts = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
    json!({
        "uid": rec.uid,
        "api_key": rec.stack,
        "name": rec.name,
        "description": rec.description,
        "scope": &*rec.scope,
        "expires_on": rec.expires_on.as_ref().map(|e| e.text.clone()),
        "is_email_notification_enabled": rec.is_email_notification_enabled,
        "rate_limit": rec.rate_limit,
        "created_by": rec.created_by,
        "updated_by": rec.updated_by,
        "created_at": ts(&rec.created_at),
        "updated_at": ts(&rec.updated_at),
        "expiry_notified_at": rec.expiry_notified_at.map(now_rfc3339),
        "enabled": rec.enabled,
        "previous_token_expires_at": rec.previous_secret.map(|p| now_rfc3339(p.until)),
        "origin": rec.origin,
        "usage": usage,
    })
}

/// A record as every response shows it: [`to_json`] after filling in when the expiry
/// notice for its current expiry went out. The notice time lives in the store beside
/// the record (the notifier writes it), not in the record a create or update returns,
/// so every response (POST, PUT, GET one, list) goes through here to show the same thing.
async fn shown(gw: &Gateway, mut rec: TokenRecord, usage: &StackUsage) -> Result<Value, GatewayError> {
    if let Some(at) = rec.expires_on.as_ref().map(|e| e.at) {
        rec.expiry_notified_at = gw.store().first_notice(&rec.uid, at).await.map_err(store_error)?;
    }
    let usage = usage.json(&rec.uid);
    Ok(to_json(&rec, usage))
}

/// The usage of one stack's tokens as responses show it: this replica's counters
/// (in memory, since start) and the later of this replica's and the store's last use
/// (the store has every replica's, up to one flush interval old). Gathered once per
/// response, so a list costs one store query and one scan of the token index.
struct StackUsage {
    counters: HashMap<String, Arc<Usage>>,
    stored: HashMap<String, i64>,
}

impl StackUsage {
    async fn of(gw: &Gateway, api_key: &str) -> Result<Self, GatewayError> {
        let stored = gw.store().last_used(api_key).await.map_err(store_error)?;
        let snap = gw.snapshot();
        let counters =
            snap.usage_of_stack(api_key).into_iter().map(|(uid, u)| (uid.to_owned(), Arc::clone(u))).collect();
        Ok(StackUsage { counters, stored })
    }

    fn json(&self, uid: &str) -> Value {
        let here = self.counters.get(uid);
        let last = here.and_then(|u| u.last_used_at()).max(self.stored.get(uid).copied());
        usage_json(last, |o| here.map_or(0, |u| u.count(o)))
    }
}

fn usage_json(last_used_at: Option<i64>, count: impl Fn(Outcome) -> u64) -> Value {
    json!({
        "last_used_at": last_used_at.map(now_rfc3339),
        "forwarded": count(Outcome::Forwarded),
        "refused": count(Outcome::Refused),
        "rate_limited": count(Outcome::RateLimited),
    })
}

fn ok(status: StatusCode, value: Value) -> Result<Response<Body>, GatewayError> {
    Ok(crate::error::json_response(status, &value).map(proxy::full))
}

/// Tokens from the configuration file change only with the file: 422 for an API change.
fn refuse_static(stack: &Stack, uid: &str, verb: &str) -> Result<(), GatewayError> {
    match static_token(stack, uid) {
        Some(_) => Err(field_error(
            "uid",
            &format!("this token is defined in the configuration file and cannot be {verb} through the API."),
        )),
        None => Ok(()),
    }
}

fn static_token<'s>(stack: &'s Stack, uid: &str) -> Option<&'s TokenRecord> {
    stack.tokens.iter().find(|t| t.uid == uid)
}

async fn list(gw: &Gateway, stack: &Stack) -> Result<Response<Body>, GatewayError> {
    let stored = gw.store().list(&stack.api_key).await.map_err(store_error)?;
    let usage = StackUsage::of(gw, &stack.api_key).await?;
    let mut tokens = Vec::with_capacity(stack.tokens.len() + stored.len());
    for rec in stack.tokens.iter().cloned().chain(stored) {
        tokens.push(shown(gw, rec, &usage).await?);
    }
    ok(StatusCode::OK, json!({ "tokens": tokens }))
}

async fn show(gw: &Gateway, stack: &Stack, uid: &str) -> Result<Response<Body>, GatewayError> {
    let rec = match static_token(stack, uid) {
        Some(rec) => rec.clone(),
        None => gw.store().get(&stack.api_key, uid).await.map_err(store_error)?.ok_or(GatewayError::TokenNotFound)?,
    };
    let usage = StackUsage::of(gw, &stack.api_key).await?;
    ok(StatusCode::OK, json!({ "token": shown(gw, rec, &usage).await? }))
}

fn context<'a>(
    gw: &Gateway,
    stack: &'a Stack,
    config: &'a crate::config::Config,
) -> Result<input::Context<'a>, GatewayError> {
    let org = config.organizations.iter().find(|o| o.uid == stack.organization).ok_or(GatewayError::StackNotFound)?;
    Ok(input::Context { stack, org, now: gw.clock().now() })
}

async fn create(gw: &Arc<Gateway>, stack: &Stack, user: &str, body: Bytes) -> Result<Response<Body>, GatewayError> {
    let parsed = input::parse(&body, input::Purpose::Create)?;
    let snap = gw.snapshot();
    let ctx = context(gw, stack, &snap.config)?;
    let (secret, uid) = match (new_secret(), new_uid()) {
        (Ok(s), Ok(u)) => (s, u),
        _ => return Err(GatewayError::Unavailable),
    };
    let now = now_rfc3339(ctx.now);
    let base = TokenRecord {
        uid,
        stack: stack.api_key.clone(),
        name: String::new(),
        description: String::new(),
        secret_sha256: hash_secret(secret.as_bytes()),
        scope: Vec::new().into(),
        expires_on: None,
        is_email_notification_enabled: false,
        rate_limit: None,
        created_by: user.into(),
        updated_by: user.into(),
        created_at: now.clone(),
        updated_at: now,
        expiry_notified_at: None,
        enabled: true,
        previous_secret: None,
        origin: Origin::Store,
    };
    let rec = input::apply(parsed, base, &ctx, true).map_err(GatewayError::Unprocessable)?;
    // The cap is read inside the commit, from the config then in force: a reload that
    // adds static tokens (or lowers the cap) runs under the same lock, so the two cannot
    // both pass it (found by the sixth outside attack).
    let current = Arc::clone(gw);
    let create = move |store: Arc<dyn crate::store::TokenStore>| async move {
        let cap = cap_of(&current.snapshot().config, &rec.stack);
        store.create(&rec, cap).await.map(|()| rec)
    };
    let rec = gw.commit(create, |rec| Change::Upsert(rec)).await.map_err(store_error)?;
    tracing::info!(token.uid = %rec.uid, stack = %rec.stack, by = %user, "management token created");
    crate::config::warn_if_no_channel(&snap.config.notify, &rec);
    // No store call after the commit: one that failed would answer 503 for a token
    // that exists, its secret shown to no one. A new token has no use and no notice.
    let mut token = to_json(&rec, usage_json(None, |_| 0));
    token["token"] = json!(secret);
    ok(StatusCode::CREATED, json!({ "notice": "Management Token created successfully.", "token": token }))
}

async fn update(
    gw: &Arc<Gateway>,
    stack: &Stack,
    user: &str,
    uid: &str,
    body: Bytes,
) -> Result<Response<Body>, GatewayError> {
    refuse_static(stack, uid, "changed")?;
    let parsed = input::parse(&body, input::Purpose::Update)?;
    let snap = gw.snapshot();
    let ctx = context(gw, stack, &snap.config)?;
    // The body is applied to the record inside the store's transaction, not to a copy
    // read before it: two concurrent updates of different fields then both stay (a
    // scope downgrade is never undone by a description change that read the old scope).
    // The edit must own what it validates against, so it takes copies of the stack and
    // organisation: one copy per update (the stack's size: its static tokens, branches
    // and members), which token-API writes, rare and already bound by an fsync, afford.
    let (stack_owned, org_owned, now) = (stack.clone(), ctx.org.clone(), ctx.now);
    let (user_owned, updated_at) = (user.to_owned(), now_rfc3339(now));
    let edit: Edit = Box::new(move |stored| {
        let ctx = input::Context { stack: &stack_owned, org: &org_owned, now };
        let mut rec = input::apply(parsed, stored, &ctx, false)?;
        rec.updated_by = user_owned;
        rec.updated_at = updated_at;
        Ok(rec)
    });
    let (api_key, uid_owned) = (stack.api_key.clone(), uid.to_owned());
    let rec = gw
        .commit(|store| async move { store.modify(&api_key, &uid_owned, edit).await }, |rec| Change::Upsert(rec))
        .await
        .map_err(store_error)?;
    tracing::info!(token.uid = %rec.uid, stack = %rec.stack, by = %user, "management token updated");
    crate::config::warn_if_no_channel(&snap.config.notify, &rec);
    let usage = StackUsage::of(gw, &stack.api_key).await?;
    ok(
        StatusCode::OK,
        json!({ "notice": "Management Token updated successfully.", "token": shown(gw, rec, &usage).await? }),
    )
}

/// `POST .../{uid}/regenerate`: a new secret, shown once in the answer. The old secret
/// becomes the token's previous one for the grace period (`grace_period`, default 0:
/// it stops at once), so clients can switch without an outage; only one previous
/// secret is kept, so regenerating again ends the earlier one's grace. Applied as a
/// read-modify-write in the store ([`crate::store::TokenStore::rotate`]), so it never
/// undoes a concurrent update of the token's other fields.
async fn regenerate(
    gw: &Arc<Gateway>,
    stack: &Stack,
    user: &str,
    uid: &str,
    body: Bytes,
) -> Result<Response<Body>, GatewayError> {
    refuse_static(stack, uid, "regenerated")?;
    let grace = input::parse_regenerate(&body)?;
    let secret = new_secret().map_err(|_| GatewayError::Unavailable)?;
    let sha256 = hash_secret(secret.as_bytes());
    let now = gw.clock().now();
    let (user_owned, updated_at) = (user.to_owned(), now_rfc3339(now));
    let edit: Edit = Box::new(move |mut rec| {
        rec.previous_secret =
            (grace > 0).then(|| PreviousSecret { sha256: rec.secret_sha256, until: now.saturating_add(grace) });
        rec.secret_sha256 = sha256;
        rec.updated_by = user_owned;
        rec.updated_at = updated_at;
        Ok(rec)
    });
    let (api_key, uid_owned) = (stack.api_key.clone(), uid.to_owned());
    let rec = gw
        .commit(|store| async move { store.rotate(&api_key, &uid_owned, edit).await }, |rec| Change::Rotate(rec))
        .await
        .map_err(store_error)?;
    tracing::info!(token.uid = %rec.uid, stack = %rec.stack, by = %user, grace_seconds = grace,
        "management token regenerated");
    let usage = StackUsage::of(gw, &stack.api_key).await?;
    let mut token = shown(gw, rec, &usage).await?;
    token["token"] = json!(secret);
    ok(StatusCode::OK, json!({ "notice": "Management Token regenerated successfully.", "token": token }))
}

/// `GET .../audit?skip=N&limit=M`: the stack's token changes, newest first.
async fn audit(gw: &Gateway, stack: &Stack, query: Option<&str>) -> Result<Response<Body>, GatewayError> {
    let (skip, limit) = input::parse_page(query)?;
    let page = gw.store().audit(&stack.api_key, skip, limit).await.map_err(store_error)?;
    let entries: Vec<Value> = page
        .entries
        .iter()
        .map(|e| {
            json!({
                "id": e.id,
                "api_key": e.stack,
                "token_uid": e.token_uid,
                "action": e.action.name(),
                "user_uid": e.user,
                "at": e.at,
                "fields": e.fields,
            })
        })
        .collect();
    ok(StatusCode::OK, json!({ "entries": entries, "count": page.total }))
}

async fn delete(gw: &Arc<Gateway>, stack: &Stack, user: &str, uid: &str) -> Result<Response<Body>, GatewayError> {
    refuse_static(stack, uid, "deleted")?;
    let (api_key, uid_owned) = (stack.api_key.clone(), uid.to_owned());
    let (by, at) = (user.to_owned(), now_rfc3339(gw.clock().now()));
    let rec = gw
        .commit(|store| async move { store.delete(&api_key, &uid_owned, &by, &at).await }, |rec| Change::Remove(rec))
        .await
        .map_err(store_error)?;
    tracing::info!(token.uid = %rec.uid, stack = %rec.stack, "management token deleted");
    ok(StatusCode::OK, json!({ "notice": "Management Token deleted successfully." }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every field a response shows is either accepted or in `RETURNED_ONLY`: a record
    /// as the API returns it parses as an update body (the SDKs' fetch-then-update), so
    /// a field added to `to_json` must be added to one or the other.
    #[test]
    fn a_shown_record_parses_as_an_update() {
        let rec = TokenRecord {
            uid: "blt0000000000000001".into(),
            stack: "blt0123456789abcdef".into(),
            name: "n".into(),
            description: "d".into(),
            secret_sha256: [0; 32],
            scope: vec![crate::token::ScopeEntry {
                module: "branch".into(),
                acl: crate::token::Acl { read: true, write: false },
                branches: Some(vec!["main".into()]),
                branch_aliases: None,
            }]
            .into(),
            expires_on: crate::token::parse_expiry("2099-01-01").ok(),
            is_email_notification_enabled: true,
            rate_limit: Some(crate::token::RateLimit { read_per_second: 1, write_per_second: 1 }),
            created_by: "alice".into(),
            updated_by: "alice".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            updated_at: "2026-01-01T00:00:00Z".into(),
            expiry_notified_at: Some(1),
            enabled: true,
            previous_secret: None,
            origin: Origin::Store,
        };
        let mut token = to_json(&rec, usage_json(Some(1_800_000_000), |_| 3));
        token["token"] = json!("cs00000000000000000000000000000000");
        let body = json!({ "token": token }).to_string();
        let parsed = input::parse(body.as_bytes(), input::Purpose::Update);
        assert!(parsed.is_ok(), "{body}: {parsed:?}");
    }
}

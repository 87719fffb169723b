//! The one immutable value the request path reads. A reload or a token change builds
//! a new [`Snapshot`] and swaps it in whole (see `gateway::Gateway`), so every
//! request sees a consistent config, token set, upstream and set of rate buckets.

use crate::config::{Config, Organization, UserSessions};
use crate::proxy::UpstreamClient;
use crate::ratelimit::{Bucket, Charge, OrgBuckets, Payer, RateClock, TokenBuckets};
use crate::token::{compile_stored_scope, BranchCatalog, Grants, TokenRecord};
use crate::usage::Usage;
use http::uri::Authority;
use std::collections::HashMap;
use std::sync::Arc;

/// Hashes a SHA-256 key by its first eight bytes. The keys are digests of client input,
/// already uniform and not choosable by an attacker, so SipHash would only add cost.
#[derive(Default, Clone, Copy)]
pub struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        if let Some(head) = bytes.get(..8) {
            let mut b = [0u8; 8];
            b.copy_from_slice(head);
            self.0 = u64::from_ne_bytes(b);
        } else {
            for &byte in bytes {
                self.0 = self.0.rotate_left(8) ^ u64::from(byte);
            }
        }
    }

    // The slice length prefix of `[u8; 32]` carries no information.
    fn write_usize(&mut self, _: usize) {}
}

/// The `BuildHasher` of the token index.
pub type DigestHash = std::hash::BuildHasherDefault<DigestHasher>;

/// An organisation and its shared buckets.
#[derive(Debug)]
pub struct OrgState {
    pub config: Organization,
    pub buckets: OrgBuckets,
    /// What every token without a custom rate draws from (shared, not copied per token).
    pub default_charges: Arc<TokenBuckets>,
}

/// A stack as the request path needs it.
#[derive(Debug)]
pub struct StackView {
    pub api_key: Box<str>,
    pub branches: Box<[Box<str>]>,
    /// (alias, target branch)
    pub aliases: Box<[(Box<str>, Box<str>)]>,
    pub organization: Arc<OrgState>,
}

impl StackView {
    pub fn has_branch(&self, name: &str) -> bool {
        self.branches.iter().any(|b| &**b == name)
    }

    pub fn alias_target(&self, name: &str) -> Option<&str> {
        self.aliases.iter().find(|(a, _)| &**a == name).map(|(_, t)| &**t)
    }
}

/// Scopes are checked against the snapshot's view of the stack, which holds the same
/// branches and aliases as its config.
impl BranchCatalog for StackView {
    fn has_branch(&self, name: &str) -> bool {
        StackView::has_branch(self, name)
    }

    fn has_alias(&self, name: &str) -> bool {
        self.alias_target(name).is_some()
    }
}

/// A token as the request path needs it, with its rate buckets beside it.
#[derive(Debug, Clone)]
pub struct Token {
    pub uid: Box<str>,
    pub stack: Arc<StackView>,
    /// Shared by every token of the snapshot with the same grants (see [`SharedGrants`]).
    pub grants: Arc<Grants>,
    /// Unix seconds; expired when `now >= expires_at`.
    pub expires_at: Option<i64>,
    /// `false` while suspended: kept in the index (not dropped) so a suspended token
    /// presented is answered as suspended, not counted as a credential guess.
    pub enabled: bool,
    /// Set on the index entry of a regenerated token's previous secret: Unix seconds
    /// from which that secret is refused (its grace period's end). `None` on the entry
    /// of the current secret.
    pub retires_at: Option<i64>,
    /// `read` or `read-write`, for the identity header.
    pub access_label: &'static str,
    pub buckets: Arc<TokenBuckets>,
    /// This token's usage counters, shared with every later version of the token (and
    /// with its previous secret's entry), so counts survive rebuilds and rotation.
    pub usage: Arc<Usage>,
}

impl Token {
    /// Who this token's requests are charged to.
    pub fn payer(&self) -> Payer<'_> {
        Payer { buckets: &self.buckets, token_uid: &self.uid, org_uid: &self.stack.organization.config.uid }
    }
}

/// Request-path settings copied out of the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub user_sessions: UserSessions,
    pub max_inspected_body: u64,
    pub max_inspected_total: u64,
    pub forward_token: bool,
    /// Authorities an HTTP/1 absolute-form target may name.
    pub own_authorities: Vec<Authority>,
}

/// Everything the request path reads, built once per change.
#[derive(Debug)]
pub struct Snapshot {
    pub config: Arc<Config>,
    pub settings: Settings,
    pub upstream: UpstreamClient,
    pub rate_clock: RateClock,
    /// The main listener's TLS configuration (certificates reload with the config).
    pub tls: Option<crate::tls::ServerTls>,
    orgs: HashMap<Box<str>, Arc<OrgState>>,
    stacks: HashMap<Box<str>, Arc<StackView>>,
    tokens: HashMap<[u8; 32], Arc<Token>, DigestHash>,
    /// authtoken SHA-256 -> user uid
    users: HashMap<[u8; 32], Box<str>>,
}

/// Logs the stored tokens a snapshot that serves goes on without (see
/// [`SnapshotBuilder::clashes`]).
pub fn log_clashes(clashes: &[String]) {
    for clash in clashes {
        tracing::error!(%clash, "a static token of the config has this stored token's uid; the stored token is left out");
    }
}

impl Snapshot {
    /// Builds a snapshot from a validated config plus the store's tokens (see
    /// [`SnapshotBuilder`], which takes the stored tokens one at a time).
    pub fn build(
        config: Arc<Config>,
        stored: &[TokenRecord],
        previous: Option<Arc<Snapshot>>,
        rate_clock: &RateClock,
        upstream: UpstreamClient,
    ) -> Snapshot {
        let mut builder = SnapshotBuilder::new(config, previous, rate_clock, upstream);
        builder.expect(stored.len());
        for rec in stored {
            builder.add(rec);
        }
        log_clashes(builder.clashes());
        builder.finish()
    }

    /// This snapshot serving TLS with `tls`: the names its certificate is for become
    /// the gateway's own authorities, bare (a client behind a port mapping, or on 443)
    /// and with the listen port.
    pub fn with_tls(mut self, tls: Option<crate::tls::ServerTls>) -> Snapshot {
        if let Some(t) = &tls {
            let port = self.config.server.listen.port();
            for name in &t.names {
                for host in [name.to_string(), format!("{name}:{port}")] {
                    if let Ok(a) = host.parse() {
                        self.settings.own_authorities.push(a);
                    }
                }
            }
        }
        self.tls = tls;
        self
    }

    /// A copy of this snapshot with one stored token added or replaced (`upsert`) and/or
    /// one removed (`remove`, by secret hash). Buckets of an unchanged rate are kept.
    /// Costs a copy of the token index (pointer-sized entries), not a full rebuild.
    pub fn with_token_change(&self, upsert: Option<&TokenRecord>, remove: &[[u8; 32]]) -> Snapshot {
        let mut tokens = self.tokens.clone();
        for hash in remove {
            tokens.remove(hash);
        }
        if let Some(rec) = upsert {
            let share = self.config.ratelimit.local_share();
            let mut grants = SharedGrants::default();
            match compile_token(rec, &self.stacks, Some(self), &self.rate_clock, share, &mut grants) {
                Some((token, lost)) => {
                    if lost {
                        tracing::warn!(token.uid = %rec.uid, "token names a branch or alias its stack no longer has; those grant nothing");
                    }
                    insert_token(&mut tokens, rec, token)
                }
                None => {
                    tracing::warn!(token.uid = %rec.uid, "token does not match its stack's config; ignored")
                }
            }
        }
        Snapshot {
            config: Arc::clone(&self.config),
            settings: self.settings.clone(),
            upstream: self.upstream.clone(),
            rate_clock: self.rate_clock.clone(),
            tls: self.tls.clone(),
            orgs: self.orgs.clone(),
            stacks: self.stacks.clone(),
            tokens,
            users: self.users.clone(),
        }
    }

    pub fn stack(&self, api_key: &str) -> Option<&Arc<StackView>> {
        self.stacks.get(api_key)
    }

    pub fn token(&self, secret_sha256: &[u8; 32]) -> Option<&Arc<Token>> {
        self.tokens.get(secret_sha256)
    }

    /// The configured user with this authtoken hash.
    pub fn user(&self, authtoken_sha256: &[u8; 32]) -> Option<&str> {
        self.users.get(authtoken_sha256).map(|u| &**u)
    }

    /// The secret hashes (current, and previous while kept) of the token `uid` of
    /// stack `api_key`, by a scan: for changes made by other replicas and for
    /// regeneration (rare, and off the request path), never per request.
    pub fn find_stored(&self, api_key: &str, uid: &str) -> Vec<[u8; 32]> {
        self.tokens
            .iter()
            .filter(|(_, t)| &*t.uid == uid && &*t.stack.api_key == api_key)
            .map(|(hash, _)| *hash)
            .collect()
    }

    /// Every index entry (a regenerated token's two secrets are two entries of the
    /// same uid and `usage`): for scrapes and the usage flusher, never per request.
    pub fn tokens(&self) -> impl Iterator<Item = &Arc<Token>> {
        self.tokens.values()
    }

    /// The usage counters of the stack's tokens by uid, by one scan of the index
    /// (token API answers: off the request path).
    pub fn usage_of_stack(&self, api_key: &str) -> HashMap<&str, &Arc<Usage>> {
        self.tokens.values().filter(|t| &*t.stack.api_key == api_key).map(|t| (&*t.uid, &t.usage)).collect()
    }

    /// Tokens, not secrets: a regenerated token's previous secret, kept for its grace
    /// period, is an index entry of its own but no token more (the forty-sixth outside
    /// probe saw `stackgate_tokens_loaded` count it). A scan, as a change's copy of the
    /// index is: on swaps, never per request.
    pub fn token_count(&self) -> usize {
        self.tokens.values().filter(|t| t.retires_at.is_none()).count()
    }

    /// The stacks holding more tokens (static and stored, each uid once) than their
    /// organisation's `max_tokens_per_stack`, as `stack: held > cap` texts. The token
    /// API keeps creations under the cap; a config change (a static token more, a
    /// lower cap) can still pass it, and is named here.
    pub fn stacks_over_cap(&self) -> Vec<String> {
        let mut uids: HashMap<&str, std::collections::HashSet<&str>> = HashMap::new();
        for t in self.tokens.values() {
            uids.entry(&*t.stack.api_key).or_default().insert(&*t.uid);
        }
        let mut over: Vec<String> = uids
            .into_iter()
            .filter_map(|(api_key, held)| {
                let cap = self.stack(api_key)?.organization.config.max_tokens_per_stack;
                (held.len() > cap as usize)
                    .then(|| format!("{api_key}: {} tokens > max_tokens_per_stack = {cap}", held.len()))
            })
            .collect();
        over.sort();
        over
    }

    fn org(&self, uid: &str) -> Option<&Arc<OrgState>> {
        self.orgs.get(uid)
    }
}

/// Builds a [`Snapshot`] from stored tokens handed in one at a time, as the store reads
/// them: a million tokens never sit in memory twice (as records and as the index the
/// request path reads). The config's own tokens are added first. Stored tokens whose
/// stack no longer exists are skipped (fail closed) and logged; a branch or alias a
/// stored token names that its stack lost grants nothing, the rest of its scope stands
/// (see [`compile_stored_scope`]). Every rate
/// bucket whose rate did not change is taken over from `previous`.
pub struct SnapshotBuilder {
    config: Arc<Config>,
    previous: Option<Arc<Snapshot>>,
    upstream: UpstreamClient,
    rate_clock: RateClock,
    share: u32,
    orgs: HashMap<Box<str>, Arc<OrgState>>,
    stacks: HashMap<Box<str>, Arc<StackView>>,
    tokens: HashMap<[u8; 32], Arc<Token>, DigestHash>,
    grants: SharedGrants,
    /// The static tokens' uids (in lower case), and the stored tokens that have one
    /// (see [`SnapshotBuilder::clashes`]).
    static_uids: std::collections::HashSet<Box<str>>,
    clashes: Vec<String>,
    /// How many stored tokens name a branch or alias their stack lost, and the first:
    /// logged once per build (a reload may touch a million tokens).
    lost: (usize, Option<Box<str>>),
}

/// The grants built so far, each kept once: a million tokens hold a handful of distinct
/// scopes, and a token's own copy (with its branch names) was about a sixth of its
/// memory. Only pointers are kept here; the set is dropped with its builder.
/// The last one shared is compared first: tokens come in bulk with the same scope, and
/// a comparison costs less than hashing the branch names.
#[derive(Default)]
struct SharedGrants {
    all: std::collections::HashSet<Arc<Grants>>,
    last: Option<Arc<Grants>>,
}

impl SharedGrants {
    /// The one shared copy of `grants`, or `previous` (the token's grants in the
    /// snapshot before) when it is the same, so a rebuild keeps them shared.
    fn share(&mut self, grants: Grants, previous: Option<&Arc<Grants>>) -> Arc<Grants> {
        if let Some(last) = self.last.as_ref().filter(|last| ***last == grants) {
            return Arc::clone(last);
        }
        let shared = match self.all.get(&grants) {
            Some(kept) => Arc::clone(kept),
            None => {
                let kept = previous.filter(|p| ***p == grants).map(Arc::clone);
                let shared = kept.unwrap_or_else(|| Arc::new(grants));
                self.all.insert(Arc::clone(&shared));
                shared
            }
        };
        self.last = Some(Arc::clone(&shared));
        shared
    }
}

impl SnapshotBuilder {
    pub fn new(
        config: Arc<Config>,
        previous: Option<Arc<Snapshot>>,
        rate_clock: &RateClock,
        upstream: UpstreamClient,
    ) -> SnapshotBuilder {
        let share = config.ratelimit.local_share();
        let prev = previous.as_deref();
        let orgs: HashMap<Box<str>, Arc<OrgState>> = config
            .organizations
            .iter()
            .map(|o| (o.uid.as_str().into(), Arc::new(org_state(o, prev, rate_clock, share))))
            .collect();
        let mut stacks = HashMap::with_capacity(config.stacks.len());
        for s in &config.stacks {
            let Some(org) = orgs.get(s.organization.as_str()) else {
                continue;
            };
            let view = StackView {
                api_key: s.api_key.as_str().into(),
                branches: s.branches.iter().map(|b| b.as_str().into()).collect(),
                aliases: s.aliases.iter().map(|(a, t)| (a.as_str().into(), t.as_str().into())).collect(),
                organization: Arc::clone(org),
            };
            stacks.insert(s.api_key.as_str().into(), Arc::new(view));
        }
        let statics = config.stacks.iter().map(|s| s.tokens.len()).sum();
        let tokens = HashMap::with_capacity_and_hasher(statics, DigestHash::default());
        let static_uids =
            config.stacks.iter().flat_map(|s| s.tokens.iter()).map(|t| t.uid.to_ascii_lowercase().into()).collect();
        let mut builder = SnapshotBuilder {
            config,
            previous,
            upstream,
            rate_clock: rate_clock.clone(),
            share,
            orgs,
            stacks,
            tokens,
            grants: SharedGrants::default(),
            static_uids,
            clashes: Vec::new(),
            lost: (0, None),
        };
        let config = Arc::clone(&builder.config);
        for rec in config.stacks.iter().flat_map(|s| s.tokens.iter()) {
            builder.add(rec);
        }
        builder
    }

    /// Makes room for `stored` tokens at once, so a million-token index is not grown
    /// step by step (each step briefly holds the old table and the new).
    pub fn expect(&mut self, stored: usize) {
        self.tokens.reserve(stored);
    }

    /// Adds one stored token, unless a static token of the config has its uid (then it
    /// is left out, and named in [`SnapshotBuilder::clashes`]).
    pub fn add(&mut self, rec: &TokenRecord) {
        if rec.origin == crate::token::Origin::Store && self.takes_static_uid(&rec.uid) {
            // Named, not logged: a config that brings the clash is refused whole, and
            // only a build that goes on without the token says so (see `log_clashes`).
            self.clashes.push(format!("{}: a stored token has this uid", rec.uid));
            return;
        }
        let previous = self.previous.as_deref();
        match compile_token(rec, &self.stacks, previous, &self.rate_clock, self.share, &mut self.grants) {
            Some((token, lost)) => {
                if lost {
                    self.lost.0 += 1;
                    self.lost.1.get_or_insert_with(|| rec.uid.as_str().into());
                }
                insert_token(&mut self.tokens, rec, token)
            }
            None => tracing::warn!(token.uid = %rec.uid, "token no longer matches its stack's config; ignored"),
        }
    }

    /// Whether a static token has `uid`, in any letter case (a backend may not tell
    /// `blt1a` from `BLT1A`; the twenty-ninth outside probe found the case-folded
    /// spelling accepted).
    fn takes_static_uid(&self, uid: &str) -> bool {
        if self.static_uids.is_empty() {
            return false;
        }
        let mut folded = [0u8; 64];
        match folded.get_mut(..uid.len()) {
            Some(room) => {
                room.copy_from_slice(uid.as_bytes());
                room.make_ascii_lowercase();
                std::str::from_utf8(room).is_ok_and(|uid| self.static_uids.contains(uid))
            }
            None => self.static_uids.contains(uid.to_ascii_lowercase().as_str()),
        }
    }

    /// The stored tokens left out because a static token has their uid. A token's uid
    /// names it in the token API, in the backend's `x-stackgate-token-uid` and in the
    /// metrics: two tokens under one uid would be one identity to all of them, and the
    /// stored one could no longer be suspended or deleted (the API finds the static one
    /// first), as an outside probe showed. A config that does this is refused (at start
    /// and on reload).
    pub fn clashes(&self) -> &[String] {
        &self.clashes
    }

    pub fn finish(self) -> Snapshot {
        let SnapshotBuilder { config, upstream, rate_clock, orgs, stacks, tokens, lost, .. } = self;
        if let (count, Some(first)) = lost {
            tracing::warn!(tokens = count, first = %first,
                "stored tokens name a branch or alias their stack no longer has (or an empty list); those names grant nothing");
        }
        let users = config.users.iter().map(|u| (u.authtoken_sha256, u.uid.as_str().into())).collect();
        let settings = settings(&config);
        Snapshot { config, settings, upstream, rate_clock, tls: None, orgs, stacks, tokens, users }
    }
}

/// An organisation's buckets, kept from the previous snapshot where the rate is the same.
/// With `share` > 1 each bucket is this replica's part (Redis fail mode `local`).
fn org_state(o: &Organization, previous: Option<&Snapshot>, clock: &RateClock, share: u32) -> OrgState {
    let prev = previous.and_then(|p| p.org(&o.uid)).map(|p| &p.buckets);
    let burst = |rate: u32| o.burst.unwrap_or(rate);
    let keep = |old: Option<&Arc<Bucket>>, name, rate, burst| match old {
        Some(b) if b.rate() == rate && b.burst() == burst => Arc::clone(b),
        _ => Arc::new(Bucket::shared(name, rate, burst, share, clock)),
    };
    let buckets = OrgBuckets {
        read: keep(prev.map(|b| &b.read), "org-read", o.read_per_second, burst(o.read_per_second)),
        write: keep(prev.map(|b| &b.write), "org-write", o.write_per_second, burst(o.write_per_second)),
        bulk: keep(prev.map(|b| &b.bulk), "org-bulk", o.bulk_per_second, o.bulk_per_second),
    };
    let default_charges = Arc::new(charges(None, None, &buckets));
    OrgState { config: o.clone(), buckets, default_charges }
}

/// Indexes a token under its secret's hash and, while a regeneration's grace period
/// is kept, under its previous secret's hash too (an entry that knows when it retires),
/// so both secrets resolve to the same token and rate buckets.
fn insert_token(tokens: &mut HashMap<[u8; 32], Arc<Token>, DigestHash>, rec: &TokenRecord, token: Token) {
    if let Some(previous) = rec.previous_secret {
        let old = Token { retires_at: Some(previous.until), ..token.clone() };
        tokens.insert(previous.sha256, Arc::new(old));
    }
    tokens.insert(rec.secret_sha256, Arc::new(token));
}

fn compile_token(
    rec: &TokenRecord,
    stacks: &HashMap<Box<str>, Arc<StackView>>,
    previous: Option<&Snapshot>,
    clock: &RateClock,
    share: u32,
    shared: &mut SharedGrants,
) -> Option<(Token, bool)> {
    let view = stacks.get(rec.stack.as_str())?;
    let (grants, lost) = compile_stored_scope(&rec.scope, &**view).ok()?;
    let access_label = if grants.write.is_empty() { "read" } else { "read-write" };
    // A regenerated token keeps its buckets: look it up by its previous secret too.
    let prev = previous
        .and_then(|p| p.token(&rec.secret_sha256).or_else(|| rec.previous_secret.and_then(|old| p.token(&old.sha256))))
        .filter(|t| *t.uid == *rec.uid);
    // Its own buckets stay with its organisation (their Redis keys name it): a stack
    // moved to another organisation starts new ones.
    let kept = prev.filter(|t| t.stack.organization.config.uid == view.organization.config.uid);
    let buckets = token_buckets(rec, &view.organization, kept.map(|t| &*t.buckets), clock, share);
    let token = Token {
        uid: rec.uid.as_str().into(),
        stack: Arc::clone(view),
        grants: shared.share(grants, prev.map(|t| &t.grants)),
        expires_at: rec.expires_on.as_ref().map(|e| e.at),
        enabled: rec.enabled,
        retires_at: None,
        access_label,
        buckets,
        usage: prev.map_or_else(Arc::default, |t| Arc::clone(&t.usage)),
    };
    Some((token, lost))
}

/// A token's own buckets (custom rate, clamped to the organisation's) and the
/// organisation's, kept from the previous snapshot where the effective rate is the same.
fn token_buckets(
    rec: &TokenRecord,
    org: &OrgState,
    prev: Option<&TokenBuckets>,
    clock: &RateClock,
    share: u32,
) -> Arc<TokenBuckets> {
    if rec.rate_limit.is_none() {
        return Arc::clone(&org.default_charges);
    }
    let own = |custom: Option<u32>, org_rate: u32, name: &'static str, old: Option<&Arc<Bucket>>| {
        let custom = custom?;
        if custom > org_rate {
            tracing::warn!(token.uid = %rec.uid, organization = %org.config.uid, custom, org_rate,
                "token rate is above its organisation's; clamped to the organisation's");
        }
        let rate = custom.min(org_rate);
        Some(match old {
            Some(b) if b.rate() == rate => Arc::clone(b),
            _ => Arc::new(Bucket::shared(name, rate, rate, share, clock)),
        })
    };
    let rl = rec.rate_limit;
    let read =
        own(rl.map(|r| r.read_per_second), org.config.read_per_second, "token-read", prev.and_then(|p| p.read.own()));
    let write = own(
        rl.map(|r| r.write_per_second),
        org.config.write_per_second,
        "token-write",
        prev.and_then(|p| p.write.own()),
    );
    Arc::new(charges(read, write, &org.buckets))
}

/// The four ways a request is charged: read, write, and both for `/v3/bulk/...`.
fn charges(read: Option<Arc<Bucket>>, write: Option<Arc<Bucket>>, o: &OrgBuckets) -> TokenBuckets {
    TokenBuckets {
        read: Charge::new(read.clone(), None, Arc::clone(&o.read)),
        write: Charge::new(write.clone(), None, Arc::clone(&o.write)),
        bulk_read: Charge::new(read, Some(Arc::clone(&o.bulk)), Arc::clone(&o.read)),
        bulk_write: Charge::new(write, Some(Arc::clone(&o.bulk)), Arc::clone(&o.write)),
    }
}

fn settings(config: &Config) -> Settings {
    let listen = config.server.listen;
    let mut own: Vec<Authority> = config.server.hostnames.iter().filter_map(|h| h.parse().ok()).collect();
    let port = listen.port();
    for host in [listen.to_string(), format!("localhost:{port}")] {
        if let Ok(a) = host.parse() {
            own.push(a);
        }
    }
    Settings {
        user_sessions: config.server.user_sessions,
        max_inspected_body: config.server.max_inspected_body,
        max_inspected_total: config.server.max_inspected_total,
        forward_token: config.upstream.forward_token,
        own_authorities: own,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::hash_secret;

    /// Three tokens: `a` and `b` with one scope, `c` read-only.
    fn config() -> Config {
        let token = |uid: &str, write: bool| {
            format!(
                "[[stacks.tokens]]\nuid = \"{uid}\"\nname = \"{uid}\"\nsecret_sha256 = \"{}\"\n\
                 scope = [{{ module = \"$all\", acl = {{ read = true, write = {write} }} }}, \
                 {{ module = \"branch\", branches = [\"main\"] }}]\n",
                hex::encode(hash_secret(format!("cs{uid:0>32}").as_bytes()))
            )
        };
        let text = format!(
            "[upstream]\nurl = \"http://127.0.0.1:9\"\n[[organizations]]\nuid = \"o\"\n\
             [[stacks]]\napi_key = \"k\"\norganization = \"o\"\n{}{}{}",
            token("a", true),
            token("b", true),
            token("c", false)
        );
        crate::config::from_str(&text).unwrap()
    }

    fn build(previous: Option<Arc<Snapshot>>) -> Arc<Snapshot> {
        let config = config();
        let upstream = crate::proxy::UpstreamClient::new(&config.upstream).unwrap();
        Arc::new(Snapshot::build(Arc::new(config), &[], previous, &RateClock::fake(), upstream))
    }

    fn grants(s: &Snapshot, uid: &str) -> Arc<Grants> {
        Arc::clone(&s.token(&hash_secret(format!("cs{uid:0>32}").as_bytes())).unwrap().grants)
    }

    /// A token whose previous secret is kept for a grace period is counted once.
    #[test]
    fn a_regenerated_token_is_counted_once() {
        let config = config();
        let scope = config.stacks[0].tokens[0].scope.clone();
        let stored = crate::token::TokenRecord {
            uid: "d".into(),
            stack: "k".into(),
            name: "d".into(),
            description: String::new(),
            secret_sha256: hash_secret(b"csnew"),
            scope,
            expires_on: None,
            is_email_notification_enabled: false,
            rate_limit: None,
            created_by: String::new(),
            updated_by: String::new(),
            created_at: String::new(),
            updated_at: String::new(),
            expiry_notified_at: None,
            enabled: true,
            previous_secret: Some(crate::token::PreviousSecret { sha256: hash_secret(b"csold"), until: i64::MAX }),
            origin: crate::token::Origin::Store,
        };
        let upstream = crate::proxy::UpstreamClient::new(&config.upstream).unwrap();
        let s = Snapshot::build(Arc::new(config), &[stored], None, &RateClock::fake(), upstream);
        assert!(s.token(&hash_secret(b"csold")).is_some() && s.token(&hash_secret(b"csnew")).is_some());
        assert_eq!(s.token_count(), 4, "a, b, c and d, whose two secrets are one token");
    }

    /// Tokens with the same scope hold one copy of its grants, and a rebuild keeps it.
    #[test]
    fn tokens_with_the_same_grants_share_one_copy() {
        let first = build(None);
        let (a, b, c) = (grants(&first, "a"), grants(&first, "b"), grants(&first, "c"));
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(!a.write.is_empty() && c.write.is_empty(), "each token keeps its own grants");
        let second = build(Some(Arc::clone(&first)));
        assert!(Arc::ptr_eq(&a, &grants(&second, "a")) && Arc::ptr_eq(&a, &grants(&second, "b")));
        assert!(Arc::ptr_eq(&c, &grants(&second, "c")));
    }
}

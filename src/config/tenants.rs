//! The tenants: organisations, users, stacks (branches, aliases) and the tokens a
//! config file declares.

use super::checks::*;
use super::errors::ConfigErrors;
use super::raw::{RawOrganization, RawStack, RawToken, RawUser};
use super::types::*;
use crate::token::{compile_scope, parse_digest, parse_expiry, BranchCatalog, Origin, TokenRecord};
use std::collections::{BTreeMap, HashMap, HashSet};

pub(super) fn organizations(raw: &[RawOrganization], errs: &mut ConfigErrors) -> Vec<Organization> {
    let mut seen = HashSet::new();
    raw.iter()
        .enumerate()
        .map(|(i, o)| {
            let p = |k: &str| format!("organizations[{i}].{k}");
            if !seen.insert(o.uid.as_str()) {
                errs.push(p("uid"), "duplicate organization uid");
            }
            check_ident(&o.uid, &p("uid"), errs);
            // No default: an absent burst means "the rate" (decided per bucket).
            let burst = o.burst.and_then(|b| bounded(Some(b), 0u32, 1, MAX_BURST, p("burst"), errs));
            let max_tokens =
                bounded(o.max_tokens_per_stack, DEFAULT_MAX_TOKENS, 1, 10_000, p("max_tokens_per_stack"), errs)
                    .unwrap_or(DEFAULT_MAX_TOKENS);
            Organization {
                uid: o.uid.clone(),
                read_per_second: rate(o.read_per_second, DEFAULT_RATE, p("read_per_second"), errs),
                write_per_second: rate(o.write_per_second, DEFAULT_RATE, p("write_per_second"), errs),
                burst,
                bulk_per_second: rate(o.bulk_per_second, DEFAULT_BULK_RATE, p("bulk_per_second"), errs),
                max_tokens_per_stack: max_tokens,
            }
        })
        .collect()
}

pub(super) fn users(raw: &[RawUser], errs: &mut ConfigErrors) -> Vec<User> {
    let mut uids = HashSet::new();
    let mut hashes = HashSet::new();
    raw.iter()
        .enumerate()
        .filter_map(|(i, u)| {
            let p = |k: &str| format!("users[{i}].{k}");
            check_ident(&u.uid, &p("uid"), errs);
            if !uids.insert(u.uid.as_str()) {
                errs.push(p("uid"), "duplicate user uid");
            }
            let Some(hash) = parse_digest(&u.authtoken_sha256) else {
                errs.push(p("authtoken_sha256"), "must be 64 hex characters (SHA-256 of the authtoken)");
                return None;
            };
            if !hashes.insert(hash) {
                errs.push(p("authtoken_sha256"), "the same authtoken is configured for another user");
            }
            Some(User { uid: u.uid.clone(), email: u.email.clone().unwrap_or_default(), authtoken_sha256: hash })
        })
        .collect()
}

pub(super) fn stacks(raw: &[RawStack], orgs: &[Organization], users: &[User], errs: &mut ConfigErrors) -> Vec<Stack> {
    let orgs: HashMap<&str, &Organization> = orgs.iter().map(|o| (o.uid.as_str(), o)).collect();
    let mut api_keys = HashSet::new();
    let mut token_uids = HashSet::new();
    let mut secrets = HashSet::new();
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let p = |k: &str| format!("stacks[{i}].{k}");
        check_ident(&s.api_key, &p("api_key"), errs);
        if !api_keys.insert(s.api_key.as_str()) {
            errs.push(p("api_key"), "duplicate api_key");
        }
        let org = orgs.get(s.organization.as_str()).copied();
        if org.is_none() {
            errs.push(p("organization"), "unknown organization (the value is not shown)");
        }
        let mut stack = Stack {
            api_key: s.api_key.clone(),
            organization: s.organization.clone(),
            name: s.name.clone().unwrap_or_default(),
            branches: s.branches.clone().unwrap_or_else(|| vec!["main".into()]),
            aliases: s.aliases.clone(),
            members: BTreeMap::new(),
            tokens: Vec::new(),
        };
        branches(&stack, i, errs);
        for (uid, role) in &s.members {
            let at = || p(&format!("members.{}", shown_key(uid)));
            if !users.iter().any(|u| &u.uid == uid) {
                errs.push(at(), "unknown user");
            }
            match Role::parse(role) {
                Some(r) => {
                    stack.members.insert(uid.clone(), r);
                }
                None => errs.push(at(), "must be owner, admin, developer or content_manager (the value is not shown)"),
            }
        }
        for (j, t) in s.tokens.iter().enumerate() {
            let tp = format!("stacks[{i}].tokens[{j}]");
            if !token_uids.insert(t.uid.as_str()) {
                errs.push(format!("{tp}.uid"), "duplicate token uid");
            }
            if let Some(rec) = token(t, &stack, org, &tp, errs) {
                // Unique within the stack, as the token API keeps names.
                if stack.tokens.iter().any(|other| other.name == rec.name) {
                    errs.push(format!("{tp}.name"), "is already used by another token of this stack");
                }
                if !secrets.insert(rec.secret_sha256) {
                    errs.push(format!("{tp}.secret_sha256"), "the same secret is used by another token");
                }
                stack.tokens.push(rec);
            }
        }
        if let Some(org) = org {
            if s.tokens.len() > org.max_tokens_per_stack as usize {
                errs.push(
                    p("tokens"),
                    format!("{} tokens exceed max_tokens_per_stack = {}", s.tokens.len(), org.max_tokens_per_stack),
                );
            }
        }
        out.push(stack);
    }
    out
}

pub(super) fn branches(stack: &Stack, i: usize, errs: &mut ConfigErrors) {
    let mut seen = HashSet::new();
    for (j, b) in stack.branches.iter().enumerate() {
        check_ident(b, &format!("stacks[{i}].branches[{j}]"), errs);
        if !seen.insert(b.as_str()) {
            errs.push(format!("stacks[{i}].branches[{j}]"), "duplicate branch");
        }
    }
    if !stack.has_branch("main") {
        errs.push(format!("stacks[{i}].branches"), "must include \"main\" (the default branch)");
    }
    for (alias, target) in &stack.aliases {
        let p = format!("stacks[{i}].aliases.{}", shown_key(alias));
        check_ident(alias, &p, errs);
        if stack.has_branch(alias) {
            errs.push(p.as_str(), "an alias has the name of a branch");
        }
        if !stack.has_branch(target) {
            errs.push(p.as_str(), "alias points at an unknown branch (the value is not shown)");
        }
    }
}

pub(super) fn token(
    t: &RawToken,
    stack: &Stack,
    org: Option<&Organization>,
    tp: &str,
    errs: &mut ConfigErrors,
) -> Option<TokenRecord> {
    check_ident(&t.uid, &format!("{tp}.uid"), errs);
    // The token API's rules: plain spaces at the ends trimmed, 1 to 255 characters.
    let name = t.name.trim_matches(' ');
    if name.is_empty() || name.chars().count() > MAX_NAME {
        errs.push(format!("{tp}.name"), format!("must be 1-{MAX_NAME} characters"));
    }
    // The token API's rule: a listing shows these names and descriptions as they are.
    if crate::token::hides_characters(&t.name, false) {
        errs.push(format!("{tp}.name"), "must not hold control or invisible characters");
    }
    if crate::token::hides_characters(&t.description, true) {
        errs.push(
            format!("{tp}.description"),
            "must not hold control or invisible characters (but line breaks and tabs)",
        );
    }
    if let Err(fields) = compile_scope(&t.scope, stack) {
        for (field, msgs) in fields {
            for m in msgs {
                errs.push(format!("{tp}.{field}"), m);
            }
        }
    }
    let expires_on = t
        .expires_on
        .as_deref()
        .and_then(|e| parse_expiry(e).map_err(|m| errs.push(format!("{tp}.expires_on"), m)).ok());
    if let (Some(rl), Some(org)) = (t.rate_limit, org) {
        check_token_rate(rl.read_per_second, org.read_per_second, &format!("{tp}.rate_limit.read_per_second"), errs);
        check_token_rate(rl.write_per_second, org.write_per_second, &format!("{tp}.rate_limit.write_per_second"), errs);
    }
    let Some(secret_sha256) = parse_digest(&t.secret_sha256) else {
        errs.push(format!("{tp}.secret_sha256"), "must be 64 hex characters (SHA-256 of the secret)");
        return None;
    };
    Some(TokenRecord {
        uid: t.uid.clone(),
        stack: stack.api_key.clone(),
        name: name.to_owned(),
        description: t.description.clone(),
        secret_sha256,
        scope: t.scope.as_slice().into(),
        expires_on,
        is_email_notification_enabled: t.is_email_notification_enabled,
        rate_limit: t.rate_limit,
        created_by: "config".into(),
        updated_by: "config".into(),
        created_at: String::new(),
        updated_at: String::new(),
        expiry_notified_at: None,
        enabled: true,
        previous_secret: None,
        origin: Origin::Config,
    })
}

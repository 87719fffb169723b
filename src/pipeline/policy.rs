//! Stages 4 and 5: may this token do this operation on this branch, and, for the few
//! operations whose rule depends on the JSON body, does the body allow it.

use super::classify::{Access, Module, Operation, Rule};
use crate::error::{BadRequest, Denial, GatewayError};
use crate::json::JsonError;
use crate::snapshot::{StackView, Token};
use crate::token::Grants;
use http::HeaderValue;
use serde_json::Value;

/// The branch a request addresses when it sends no `branch` header.
pub const DEFAULT_BRANCH: &str = "main";

/// Checks module, access and branch scope.
pub fn authorize(token: &Token, op: &Operation, branch: Option<&HeaderValue>) -> Result<(), GatewayError> {
    let deny = |d| Err(GatewayError::Forbidden(d));
    match op.rule {
        Rule::Deny | Rule::TokenApi | Rule::Login => return deny(Denial::NeverAllowed),
        Rule::Plain | Rule::EntryWorkflow | Rule::PublishRuleApprovers | Rule::Bulk | Rule::BranchPair => {}
    }
    if op.module == Module::Unknown {
        return deny(Denial::UnknownPath);
    }
    let granted = match op.access {
        Access::Read => token.grants.read,
        Access::Write => token.grants.write,
    };
    if !granted.contains(op.module) {
        let read_only = op.access == Access::Write && token.grants.read.contains(op.module);
        return deny(if read_only { Denial::ReadOnly } else { Denial::ModuleNotInScope });
    }
    if op.module.is_branch_specific() {
        check_branch(token, branch)?;
    } else if let Some(header) = branch {
        // A module outside the branches skips the scope check (DESIGN.md section 2), but
        // the header is forwarded all the same: a list, `*` or a path would still reach a
        // backend that reads `branch` there, so it is one plain name on every module.
        if !is_branch_name(branch_text(header)?) {
            return Err(GatewayError::Forbidden(Denial::Branch));
        }
    }
    Ok(())
}

/// The branch rules of DESIGN.md section 2.
fn check_branch(token: &Token, header: Option<&HeaderValue>) -> Result<(), GatewayError> {
    let name = match header {
        None => DEFAULT_BRANCH,
        Some(v) => branch_text(v)?,
    };
    check_named_branch(token, name)
}

/// A `branch` header as text; one that is empty or not visible ASCII is a bad request
/// (an empty one is neither the default branch nor a name).
fn branch_text(header: &HeaderValue) -> Result<&str, GatewayError> {
    match header.to_str() {
        Ok(text) if !text.is_empty() => Ok(text),
        _ => Err(GatewayError::BadRequest(BadRequest::InvalidHeader)),
    }
}

/// The branch rules for a branch or alias named anywhere in the request: the `branch`
/// header, or the `base_branch` and `compare_branch` of a compare or merge (a token
/// scoped to one branch may not read another through a comparison, nor merge into it).
pub fn check_named_branch(token: &Token, name: &str) -> Result<(), GatewayError> {
    // One branch or alias name, as the config allows them, or no branch at all (403,
    // like an unknown one): a list (`a,b`, which HTTP reads as two fields), `*`, `$all`
    // or a path could mean more to a backend than the one branch the gateway admitted,
    // an All Branches token's included.
    if !is_branch_name(name) {
        return Err(GatewayError::Forbidden(Denial::Branch));
    }
    if branch_allowed(&token.grants, name, || stack_name(&token.stack, name)) {
        Ok(())
    } else {
        Err(GatewayError::Forbidden(Denial::Branch))
    }
}

/// A branch or alias name: 1 to 64 of `A-Z a-z 0-9 _ -` (the config's rule).
fn is_branch_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// What a `branch` header names in the token's stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StackName<'a> {
    Branch,
    Alias { target: &'a str },
    Unknown,
}

fn stack_name<'a>(stack: &'a StackView, name: &str) -> StackName<'a> {
    if stack.has_branch(name) {
        StackName::Branch
    } else if let Some(target) = stack.alias_target(name) {
        StackName::Alias { target }
    } else {
        StackName::Unknown
    }
}

/// Whether `grants` admit the branch or alias `name`. `lookup` classifies the name in
/// the stack; it is not called for an All Branches token, which admits any name (also
/// ones the config does not list: the backend decides whether they exist), so such a
/// token costs no lookup at all.
fn branch_allowed<'a>(grants: &Grants, name: &str, lookup: impl FnOnce() -> StackName<'a>) -> bool {
    if grants.all_branches {
        return true;
    }
    let in_branches = |b: &str| grants.branches.iter().any(|x| &**x == b);
    match lookup() {
        StackName::Branch => in_branches(name),
        StackName::Alias { target } => grants.aliases.iter().any(|a| &**a == name) || in_branches(target),
        StackName::Unknown => false,
    }
}

/// Applies the body rules of DESIGN.md section 1.3 to an already buffered body.
pub fn inspect_body(op: &Operation, body: &[u8]) -> Result<(), GatewayError> {
    // A publish-rule write without a body (a DELETE) carries no approvers, a compare (a
    // GET) or merge without one names no branch. Only an empty one: anything else is
    // read as JSON (whitespace alone is malformed).
    if matches!(op.rule, Rule::PublishRuleApprovers | Rule::BranchPair) && body.is_empty() {
        return Ok(());
    }
    let json = crate::json::parse_strict(body).map_err(|e| match e {
        JsonError::Malformed => GatewayError::BadRequest(BadRequest::MalformedJson),
        JsonError::Ambiguous { .. } => GatewayError::BadRequest(BadRequest::AmbiguousJson),
    })?;
    if reaches_past_its_object(&json) {
        return Err(GatewayError::BadRequest(BadRequest::AmbiguousJson));
    }
    let denied = match op.rule {
        Rule::EntryWorkflow => workflow_change_denied(&json),
        Rule::PublishRuleApprovers => needs_approvers(&json),
        Rule::BranchPair => names_a_branch(&json),
        Rule::Plain | Rule::Deny | Rule::Bulk | Rule::TokenApi | Rule::Login => false,
    };
    if denied {
        Err(GatewayError::Forbidden(Denial::BodyRule))
    } else {
        Ok(())
    }
}

/// Whether a key, at any depth, reaches past the object it is in to a helper that
/// walks key paths: a path through a JavaScript object's prototype
/// (`__proto__.workflow_stage`, `constructor.prototype.approvers`, a `constructor` or
/// `prototype` key) or a Python object's internals (`__class__.workflow_stage`,
/// `__init__.__globals__.x`: any part named `__...__`), or a key with a backslash,
/// which such helpers read as an escape (`["__pro\to__"]` is `__proto__` to lodash's
/// `toPath`, `__proto\__` to `set-value`). Unguarded unflattening and deep-merging
/// helpers (lodash's `set` and `defaultsDeep` before 4.17.12, `flat`'s `unflatten`
/// before 5.0.1, `set-value` 2, pydash's `set_` before 6) write through such keys into
/// every object, where a backend would then read the rule's keys from. The key counts
/// in every form a backend may read it in: percent-decoded (`%5F%5Fproto%5F%5F`, see
/// `query::in_any_form`) and with other than ASCII read as any letters (a Cyrillic `о`
/// in `cоnstructor`, see `query::may_read_as`) or dropped (a soft hyphen in
/// `__proto__`). A second reading of the body, as a `__proto__` key is (see
/// [`crate::json`]).
fn reaches_past_its_object(json: &Value) -> bool {
    // Parts are split where any reader splits them, at any character but a letter, a
    // digit, `_`, `-` or `$` (`．` is `.` in NFKC; `__` and `$` below), and where only
    // ASCII splits them, a character other than ASCII being one a reader may drop (a
    // soft hyphen); the key is read in its compatibility form too (`＿_proto__`, see
    // `query::compatibility_form`). A `-` at a part's end is the `->` of a path
    // (`__proto__->x`).
    // `class` is Java's way to the same (Spring's and BeanUtils' property paths), in any
    // case (Spring retries a property name capitalised, .NET ignores case). `__` splits
    // a path too (Django's and ASP.NET's `x__constructor__prototype`).
    let names_one = |text: &str| {
        ["constructor", "prototype", "class"].iter().any(|word| super::query::may_read_as(text, word.as_bytes()))
    };
    let part_reaches = |part: &str| {
        let reaches = |part: &str| {
            names_one(part) || dunder(part.trim_matches('-')) || (part.contains('$') && dunder(&part.replace('$', "")))
        };
        // Split at `__` and `$` as well as read whole: `c$onstructor` is `constructor`
        // to a reader that drops the `$`, `x$constructor` to one that splits at it.
        let split_at = |separator: &str| part.contains(separator) && part.split(separator).any(reaches);
        reaches(part) || split_at("__") || split_at("$")
    };
    let word = |c: char| c.is_alphanumeric() || c == '_' || c == '-' || c == '$';
    let reaches = |key: &str| {
        if key.contains('\\') || dunder(key) {
            return true;
        }
        // The second split differs from the first only at a separator other than ASCII;
        // a key without one is read once.
        let mut splits_twice = false;
        let separator = |c: char| {
            let separates = !word(c);
            splits_twice |= separates && !c.is_ascii();
            separates
        };
        key.split(separator).any(part_reaches)
            || (splits_twice && key.split(|c: char| c.is_ascii() && !word(c)).any(part_reaches))
    };
    match json {
        Value::Object(o) => o.iter().any(|(k, v)| {
            let compatible =
                || super::query::compatibility_form(k).is_some_and(|form| super::query::in_any_form(&form, reaches));
            super::query::in_any_form(k, reaches) || compatible() || reaches_past_its_object(v)
        }),
        Value::Array(a) => a.iter().any(reaches_past_its_object),
        _ => false,
    }
}

/// Whether `text` is named like a Python object's internals, `__...__`: two low lines
/// at each end (`_` or a character NFKC reads as one: full-width `＿`, the dashed,
/// centre-line and wavy ones, the vertical presentation forms) around anything.
fn dunder(text: &str) -> bool {
    let low = |c: &char| matches!(c, '_' | '\u{ff3f}' | '\u{fe33}' | '\u{fe34}' | '\u{fe4d}'..='\u{fe4f}');
    let mut chars = text.chars();
    let ends = [chars.next(), chars.next(), chars.next_back(), chars.next_back()];
    ends.iter().all(|c| c.as_ref().is_some_and(low)) && chars.next().is_some()
}

/// Whether a compare's or merge's body names a branch anywhere (`base_branch`,
/// `compare_branch` in any spelling the query rule reads): the branches checked are the
/// query's, and a backend reading the body's instead would act on others.
fn names_a_branch(json: &Value) -> bool {
    match json {
        Value::Object(o) => o.iter().any(|(k, v)| super::query::may_name_branch_pair(k) || names_a_branch(v)),
        Value::Array(a) => a.iter().any(names_a_branch),
        _ => false,
    }
}

/// Stage changes and publish-request accept/reject are for people, not tokens.
fn workflow_change_denied(json: &Value) -> bool {
    let [workflow, stage, rule, status] = fields(json, ["workflow", "workflow_stage", "publishing_rule", "status"]);
    let workflow = match workflow {
        Field::One(workflow) if workflow.is_object() => workflow,
        // Nothing we can vouch for: the backend would have to guess too.
        _ => return true,
    };
    // Present, whatever its value (DESIGN.md): a backend may read a null stage as one to
    // clear, which is a stage change too. A key the rule reads one level down, one level
    // up (`status` beside `publishing_rule`; `workflow_stage`, `publishing_rule` or
    // `status` beside `workflow`) is refused as it is in the query: a backend that
    // merges, wraps or flattens parameters would read it as the rule's.
    let [inner_stage, inner_status, inner_rule] = fields(workflow, ["workflow_stage", "status", "publishing_rule"]);
    let present = |found: &[&Field<'_>]| found.iter().any(|f| !matches!(f, Field::Absent));
    if present(&[&inner_stage, &inner_status, &stage, &rule, &status]) {
        return true;
    }
    match inner_rule {
        Field::One(rule) if !rule.is_null() => {
            // Only a new publish request (status 0) is allowed; anything else,
            // including a missing or non-numeric status, is an approval decision.
            let is_request = match field(rule, "status") {
                Field::One(status) => status.as_i64() == Some(0) || status.as_str() == Some("0"),
                _ => false,
            };
            !is_request
        }
        _ => true,
    }
}

/// Publish rules that require approvers cannot be created or changed by a token.
/// Fails closed, as the workflow rule does: a body that is not an object, a
/// `publishing_rule` that is not an object (nor absent or null, as in a DELETE's `{}`),
/// or `approvers` neither an object nor null, is nothing the gateway can vouch for (a
/// backend that reads approvers from another shape would see them).
fn needs_approvers(json: &Value) -> bool {
    // `approvers` beside or without `publishing_rule`: Rails' `wrap_parameters` wraps
    // the body's top-level keys into `publishing_rule` when it is absent.
    let [approvers, rule] = fields(json, ["approvers", "publishing_rule"]);
    if !json.is_object() || !matches!(approvers, Field::Absent) {
        return true;
    }
    let rule = match rule {
        Field::Absent | Field::One(Value::Null) => return false,
        Field::One(rule @ Value::Object(_)) => rule,
        _ => return true,
    };
    match field(rule, "approvers") {
        Field::Absent | Field::One(Value::Null) => false,
        // `users` and `roles` are the documented keys; any other key that carries
        // something might name approvers too.
        Field::One(Value::Object(approvers)) => approvers.values().any(carries_something),
        _ => true,
    }
}

/// What an object holds under a key, read as the most lenient JSON decoders read it.
enum Field<'a> {
    Absent,
    One(&'a Value),
    /// Two keys that name it (`approvers` and `Approvers`): two readings.
    Several,
}

/// The value under `wanted` (a lower-case ASCII key) in `value`, matching keys without
/// regard to case: Go's `encoding/json` does so (the last match winning), and so do
/// Jackson and System.Text.Json set to case-insensitive properties, with Unicode case
/// rules (`ſ` reads as `s`, the Kelvin sign as `k`, `ı` and `İ` as `i`). A rule that read
/// only the exact spelling would let `Approvers` past to such a backend. A key that
/// spells `wanted` only by its letters and digits (`workflowStage`, `publishing-rule`:
/// what a backend that turns keys into snake case reads as the rule's key) is a reading
/// the gateway cannot vouch for: [`Field::Several`], refused by every rule, whether or
/// not the key itself is there too. Taking it as the field instead would let a decoy
/// (`sta_tus`) stand in for a key no backend reads.
fn field<'a>(value: &'a Value, wanted: &str) -> Field<'a> {
    let [found] = fields(value, [wanted]);
    found
}

/// [`field`] for several keys in one pass over the object: each key is read once for
/// all of them (its path head found once, its letters folded once), so a body of many
/// long keys costs one look at each, not one per rule key.
fn fields<'a, const N: usize>(value: &'a Value, wanted: [&str; N]) -> [Field<'a>; N] {
    let mut found = [(); N].map(|()| Field::Absent);
    let Some(object) = value.as_object() else {
        return found;
    };
    for (key, v) in object {
        for (slot, reading) in found.iter_mut().zip(readings(key, &wanted)) {
            *slot = match (reading, &*slot) {
                (None, _) => continue,
                (Some(Reading::Spelled), Field::Absent) => Field::One(v),
                (Some(_), _) => Field::Several,
            };
        }
    }
    found
}

/// The first part of a key that is a path (see [`reading`]), if it is one: its first
/// non-empty part, for a leading separator opens no part of its own to lodash's
/// `toPath` (`[workflow][workflow_stage]`, `["workflow"].workflow_stage`) or to Rack 2's
/// query parser (`[][workflow][workflow_stage]`).
pub(super) fn path_head(key: &str) -> Option<&str> {
    let head = path_parts(key).next()?;
    (head.len() < key.len()).then_some(head)
}

/// The first part of a key as a path to each kind of reader: one that splits at every
/// character but a letter, a digit, `_` or `-` ([`path_head`]), and one that splits at
/// ASCII ones only, reading other characters as letters or dropping them (a soft hyphen
/// or a zero-width space, which NFKC_Casefold drops: `wo\u{ad}rkflow_stage.x`). An ASCII
/// key has one head.
pub(super) fn path_heads(key: &str) -> [Option<&str>; 2] {
    let ascii_head = || ascii_path_parts(key).next().filter(|head| head.len() < key.len());
    let head = path_head(key);
    [head, if key.is_ascii() { None } else { ascii_head().filter(|h| Some(*h) != head) }]
}

/// [`path_parts`] to a reader that splits at ASCII characters only (see [`path_heads`]).
pub(super) fn ascii_path_parts(key: &str) -> impl Iterator<Item = &str> {
    let separator = |c: char| c.is_ascii() && !(c.is_ascii_alphanumeric() || c == '_' || c == '-');
    key.split(separator).flat_map(|part| part.split("__")).filter(|part| !part.is_empty())
}

/// A key's non-empty parts as a path (see [`reading`]): anything but a letter, a digit,
/// `_` or `-` separates them, and so does `__`.
pub(super) fn path_parts(key: &str) -> impl Iterator<Item = &str> {
    let separator = |c: char| !(c.is_alphanumeric() || c == '_' || c == '-');
    key.split(separator).flat_map(|part| part.split("__")).filter(|part| !part.is_empty())
}

/// How a key reads as a rule's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Character by character, under a case mapping (see [`ascii_reading`]).
    Spelled,
    /// Only by its letters and digits, whatever stands between them.
    Loose,
}

/// Whether `key` reads as `wanted` (lower-case ASCII, `_` its only separator), and how.
/// A key is read up to its first NUL, as a decoder that keeps keys as C strings reads
/// it (and as the query rule reads keys): `"status\u0000"` beside `"status"` is two
/// readings of one field; and whole, the NUL a character like any other (a separator:
/// `"\u0000workflow_stage"` reads as `workflow_stage` to a reader that drops or splits
/// at control characters, and as nothing to a C-string one). Any reading but the
/// spelled one is loose, as written or percent-decoded (see `query::in_any_form`:
/// `st%61tus`); loose readings only ever refuse.
fn reading(key: &str, wanted: &str) -> Option<Reading> {
    let [reading] = readings(key, &[wanted]);
    reading
}

/// [`reading`] of one key as each of `wanted`.
fn readings<const N: usize>(key: &str, wanted: &[&str; N]) -> [Option<Reading>; N] {
    let whole = key;
    let key = key.split('\0').next().unwrap_or_default();
    let mut out = wanted.map(|w| {
        let mut spelled = w.chars();
        let spells = key.chars().all(|c| spelled.next().is_some_and(|w| ascii_reading(c) == Some(w)));
        (spells && spelled.next().is_none()).then_some(Reading::Spelled)
    });
    let whole = (whole.len() != key.len()).then_some(whole);
    let compatible = super::query::compatibility_form(whole.unwrap_or(key));
    for text in std::iter::once(key).chain(whole).chain(compatible.as_deref()) {
        if out.iter().all(Option::is_some) {
            break;
        }
        // Each form of the key (as written, then each percent-decoding) is read as
        // every word not yet decided; the look ends once each is.
        let mut decided = false;
        let found = super::query::in_any_form(text, |form| {
            let heads = path_heads(form);
            for (slot, w) in out.iter_mut().zip(wanted).filter(|(slot, _)| slot.is_none()) {
                if reads_loosely(form, heads, w) {
                    *slot = Some(Reading::Loose);
                }
            }
            decided = out.iter().all(Option::is_some);
            decided
        });
        // Found without every word decided: escapes left after every decoding, which
        // count as found for each word still open.
        if found && !decided {
            out.iter_mut().filter(|slot| slot.is_none()).for_each(|slot| *slot = Some(Reading::Loose));
        }
    }
    out
}

/// The loose reading of one form of a key: the query rule's, and wider. The key's
/// letters and digits alone, as a backend that turns keys into snake or camel case
/// reads them, with characters other than ASCII read as any letters (see
/// `query::may_read_as`: `stätus`, full-width `ｗorkflow`, `workﬂow_stage`, Cyrillic
/// `stаtus`, Hebrew `wor\u{5e7}flow_stage`). `heads` are the key's [`path_heads`],
/// found once for all the words it is read as.
fn reads_loosely(key: &str, heads: [Option<&str>; 2], wanted: &str) -> bool {
    // A key that is a path (`publishing_rule.approvers.users`, `approvers[users]`,
    // `approvers->users`, `approvers__users`, `approvers%2Eusers`): lodash's `get`,
    // MongoDB's `$set`, ASP.NET's and Django's `__`, and unflattening helpers read it as
    // nested under its first part, so that part naming `wanted` is a second reading.
    // Anything but a letter, a digit, `_` or `-` may separate a path's parts to some
    // reader (its NFKC form too: `．` is `.`), and so may `__`.
    heads.into_iter().flatten().any(|head| reading(head, wanted).is_some())
        || super::query::may_read_as(key, wanted.as_bytes())
}

/// The lower-case ASCII character a lenient decoder may read `c` as, if any: `c` itself
/// when ASCII, else its lower or upper case, or each after the other (Go folds with
/// `ToUpper(ToLower(r))`, Java compares both ways), where that is ASCII: `ı` and `İ`
/// read as `i`, the Kelvin sign as `k`, `ſ` as `s`. Each mapping is taken as its first
/// character, as the decoders' one-character mappings are (`İ` lowers to `i` followed
/// by a combining dot): reading more keys as a rule's key only refuses more.
fn ascii_reading(c: char) -> Option<char> {
    if c.is_ascii() {
        return Some(c.to_ascii_lowercase());
    }
    let (lower, upper) = (c.to_lowercase().next(), c.to_uppercase().next());
    [lower, upper, upper.and_then(|u| u.to_lowercase().next()), lower.and_then(|l| l.to_uppercase().next())]
        .into_iter()
        .flatten()
        .find(char::is_ascii)
        .map(|m| m.to_ascii_lowercase())
}

/// Whether a value names anything: null and empty arrays, strings and objects do not.
fn carries_something(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::String(s) => !s.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Bool(_) | Value::Number(_) => true,
    }
}

#[cfg(test)]
mod tests;

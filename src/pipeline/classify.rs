//! Stage 2: method + canonical path -> [`Operation`].
//!
//! The table is `shared/cma-api.md`. Matching is on whole segments, case-sensitive,
//! and fails closed: an unknown path under `/v3` becomes [`Module::Unknown`], which no
//! management token may use.

pub use crate::cma::{Access, Module, ModuleSet, Operation, Rule};
use crate::error::GatewayError;
use http::Method;

/// Deepest path we classify; anything deeper is unknown (fail closed).
const MAX_SEGMENTS: usize = 8;

/// Classifies a canonical path (from [`super::normalize`]).
///
/// Matching is exact (case-sensitive, whole segments), but backends are often less
/// strict: many routers ignore case, and some strip a format suffix (`.json`). A path
/// that such a backend would route like a CMA path the gateway did not match is
/// therefore refused, not classified as something else: the token API's path in any
/// spelling is the gateway's own (404), and a path with a segment that reads as one of
/// the table's literal words without being it (`Publishing_Rules`, `STACKS`,
/// `publishing-rules`, `entries.json`), where reading it as the word would route the
/// request elsewhere (see [`routes_alike`]), is an ambiguous path (400).
pub fn classify(method: &Method, path: &str) -> Result<Operation, GatewayError> {
    let rest = path.strip_prefix("/v3/").ok_or(GatewayError::NotFound)?;
    let mut segs: [&str; MAX_SEGMENTS] = [""; MAX_SEGMENTS];
    let mut n = 0;
    let mut deeper = false;
    for seg in split_slash(rest) {
        if n == MAX_SEGMENTS {
            deeper = true;
            break;
        }
        segs[n] = seg;
        n += 1;
    }
    let segs = segs.get(..n).unwrap_or(&[]);
    let decided = table(method, segs, deeper);
    // The token API's path in another spelling is already refused (404).
    if decided.is_ok()
        && segs.iter().any(|s| readings(s).iter().any(Option::is_some))
        && !routes_alike(segs, &decided, |segs| table(method, segs, deeper))
    {
        return Err(GatewayError::BadRequest(crate::error::BadRequest::AmbiguousPath));
    }
    decided
}

/// The route table for a path's segments under `/v3` (`deeper`: more than
/// [`MAX_SEGMENTS`] of them).
fn table(method: &Method, segs: &[&str], deeper: bool) -> Result<Operation, GatewayError> {
    let read = matches!(*method, Method::GET | Method::HEAD);
    let default = if read { Access::Read } else { Access::Write };
    if let [first, second, tail @ ..] = segs {
        if loose_eq(first, "stacks", true) && loose_eq(second, "management_tokens", true) {
            return match (*first, *second, tail, deeper) {
                // The audit trail (issue #18), GET only: never a token uid (uids are
                // `blt` + hex), and no other method has a meaning there.
                ("stacks", "management_tokens", ["audit"], false) if *method != Method::GET => {
                    Err(GatewayError::NotFound)
                }
                ("stacks", "management_tokens", [] | [_], false) => {
                    Ok(with_rule(Module::Tokens, default, Rule::TokenApi))
                }
                // The one sub-path of a token: regeneration (issue #18), POST only.
                ("stacks", "management_tokens", [_, "regenerate"], false) if *method == Method::POST => {
                    Ok(with_rule(Module::Tokens, default, Rule::TokenApi))
                }
                _ => Err(GatewayError::NotFound),
            };
        }
    }
    if deeper {
        return Ok(unknown());
    }
    // Two rows of the table match these: the publish rule (or a content type's rules)
    // named `enable`, a read, and the workflow named `publishing_rules` enabled, a write.
    // Routers differ on which wins (Express takes the one registered first).
    if let ["workflows", "publishing_rules" | "content_type", "enable" | "disable"] = segs {
        return Err(GatewayError::BadRequest(crate::error::BadRequest::AmbiguousPath));
    }
    Ok(route(method, read, default, segs))
}

/// The most segments read as words that [`routes_alike`] tries in every combination;
/// a path with more is refused (no CMA client sends one).
const MAX_READ_AS_WORDS: usize = 3;

/// How many words [`readings`] offers for a segment (some of them `None`).
const READINGS: usize = 4;

/// Whether every reading of `segs` a lenient router may take (each segment that reads
/// as a word read as it or as that word, in every combination) is `decided` by the
/// table as the path as written is. A reading that routes elsewhere would let the
/// backend act on a route the gateway did not decide: `/workflows/publishing-rules` is
/// a workflow's uid as written and the publish rules as read; `/environments/Release`
/// is an environment either way.
fn routes_alike<T: PartialEq>(segs: &[&str], decided: &T, table: impl Fn(&[&str]) -> T) -> bool {
    let mut choices = [(0, [None; READINGS]); MAX_READ_AS_WORDS];
    let mut n = 0;
    for (at, segment) in segs.iter().enumerate() {
        let words = readings(segment);
        if words.iter().any(Option::is_some) {
            let Some(slot) = choices.get_mut(n) else { return false };
            *slot = (at, words);
            n += 1;
        }
    }
    let choices = choices.get(..n).unwrap_or_default();
    let mut read = [""; MAX_SEGMENTS];
    let Some(read) = read.get_mut(..segs.len()) else { return false };
    // Each choice is a digit in base READINGS + 1: 0 keeps the segment as written, k
    // reads it as its k-th word.
    let base = READINGS + 1;
    let combinations = base.pow(n as u32);
    (1..combinations).all(|mut code| {
        read.copy_from_slice(segs);
        for &(at, words) in choices {
            let digit = code % base;
            code /= base;
            match digit.checked_sub(1).map(|k| words.get(k).copied().flatten()) {
                None => {}
                Some(Some(word)) => read[at] = word,
                // No such word: this combination is another one's.
                Some(None) => return true,
            }
        }
        table(read) == *decided
    })
}

/// The table's words a lenient router may read `segment` as, when it is not one
/// itself: its letters and digits in any case and with any separators (escaped ones
/// too: `Publishing_Rules`, `publishing-rules`, `publishingRules`, `%20publishing_rules`),
/// followed by an `s` (a router that singularises: `publishing_rule`), and its part
/// before a format suffix or other punctuation (`entries.json`), likewise. One pass
/// over the segment: the part's letters and digits are the first ones of the whole.
fn readings(segment: &str) -> [Option<&'static str>; READINGS] {
    /// The longest word's letters and digits (`transferownership`).
    const LONGEST: usize = 17;
    if is_word(segment) {
        return [None; READINGS];
    }
    let mut folded = [0u8; LONGEST + 1];
    let (mut len, mut head) = (0, None);
    let mut bytes = segment.as_bytes();
    while let [b, rest @ ..] = bytes {
        if !(b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_') && head.is_none() {
            head = Some(len);
        }
        // An escape left in a canonical path is no letter or digit (those are decoded).
        if let (b'%', [high, low, after @ ..]) = (*b, rest) {
            if high.is_ascii_hexdigit() && low.is_ascii_hexdigit() {
                bytes = after;
                continue;
            }
        }
        if b.is_ascii_alphanumeric() {
            // Longer than every word: only the part before a suffix may be one.
            let Some(slot) = folded.get_mut(len).filter(|_| len < LONGEST) else {
                len = usize::MAX;
                break;
            };
            *slot = b.to_ascii_lowercase();
            len += 1;
        }
        bytes = rest;
    }
    let mut words = |len: usize| {
        let word = folded.get(..len).and_then(word_of);
        let plural = match folded.get_mut(len) {
            Some(slot) => {
                *slot = b's';
                folded.get(..=len).and_then(word_of)
            }
            None => None,
        };
        [word, plural]
    };
    // The whole first: the part's plural writes its `s` over the whole's next letter.
    let [word, plural] = if len == usize::MAX { [None; 2] } else { words(len) };
    let [head_word, head_plural] = head.filter(|&at| at > 0 && at < len).map_or([None; 2], words);
    [word, plural, head_word, head_plural]
}

/// The literal words of the CMA path table (`route`); [`is_word`] and [`word_of`]
/// list the same words (a unit test checks).
#[cfg(test)]
const KEYWORDS: [&str; 66] = [
    "accept_ownership",
    "ancestors",
    "assets",
    "audit-logs",
    "branch_aliases",
    "branches",
    "branches_compare",
    "branches_merge",
    "branches_queue",
    "bulk",
    "clone",
    "content_type",
    "content_types",
    "delete",
    "delivery_tokens",
    "deploy",
    "descendants",
    "disable",
    "enable",
    "entries",
    "environments",
    "executions",
    "export",
    "extensions",
    "folders",
    "global_fields",
    "import",
    "item",
    "items",
    "jobs",
    "labels",
    "locales",
    "logs",
    "management_tokens",
    "move",
    "name",
    "organizations",
    "publish",
    "publish-queue",
    "publishing_rules",
    "references",
    "release",
    "releases",
    "reset",
    "retry",
    "roles",
    "settings",
    "share",
    "stacks",
    "taxonomies",
    "terms",
    "transfer_ownership",
    "unlocalize",
    "unpublish",
    "unschedule",
    "unshare",
    "update_items",
    "user",
    "user-session",
    "users",
    "variants",
    "versions",
    "webhooks",
    "workflow",
    "workflows",
    "v3",
];

/// Whether `segment` reads as `word` to a lenient router: case ignored, anything from
/// the first byte that is not a letter, digit, `-` or `_` cut off (a format suffix, an
/// encoded space), and with `fold`, `-` and `_` alike.
fn loose_eq(segment: &str, word: &str, fold: bool) -> bool {
    let end = segment.bytes().position(|b| !(b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    let head = segment.get(..end.unwrap_or(segment.len())).unwrap_or_default();
    head.len() == word.len()
        && head.bytes().zip(word.bytes()).all(|(a, b)| {
            let a = a.to_ascii_lowercase();
            a == b || (fold && matches!((a, b), (b'-', b'_') | (b'_', b'-')))
        })
}

/// Whether `segment` is one of the table's literal words, as written.
fn is_word(segment: &str) -> bool {
    matches!(
        segment,
        "accept_ownership"
            | "ancestors"
            | "assets"
            | "audit-logs"
            | "branch_aliases"
            | "branches"
            | "branches_compare"
            | "branches_merge"
            | "branches_queue"
            | "bulk"
            | "clone"
            | "content_type"
            | "content_types"
            | "delete"
            | "delivery_tokens"
            | "deploy"
            | "descendants"
            | "disable"
            | "enable"
            | "entries"
            | "environments"
            | "executions"
            | "export"
            | "extensions"
            | "folders"
            | "global_fields"
            | "import"
            | "item"
            | "items"
            | "jobs"
            | "labels"
            | "locales"
            | "logs"
            | "management_tokens"
            | "move"
            | "name"
            | "organizations"
            | "publish"
            | "publish-queue"
            | "publishing_rules"
            | "references"
            | "release"
            | "releases"
            | "reset"
            | "retry"
            | "roles"
            | "settings"
            | "share"
            | "stacks"
            | "taxonomies"
            | "terms"
            | "transfer_ownership"
            | "unlocalize"
            | "unpublish"
            | "unschedule"
            | "unshare"
            | "update_items"
            | "user"
            | "user-session"
            | "users"
            | "variants"
            | "versions"
            | "webhooks"
            | "workflow"
            | "workflows"
            | "v3"
    )
}

/// The table's word whose letters and digits (case ignored) are `text`'s.
#[cfg(test)]
fn folds_to_word(text: &str) -> Option<&'static str> {
    let folded: Vec<u8> = text.bytes().filter(u8::is_ascii_alphanumeric).map(|b| b.to_ascii_lowercase()).collect();
    word_of(&folded)
}

/// The table's word whose letters and digits are `folded` (lower case), if any. A
/// `match` on the bytes: the compiler sorts it by length, so a segment costs a length
/// switch and a comparison or two (a sorted table searched cost about 400 instructions
/// a segment).
fn word_of(folded: &[u8]) -> Option<&'static str> {
    Some(match folded {
        b"acceptownership" => "accept_ownership",
        b"ancestors" => "ancestors",
        b"assets" => "assets",
        b"auditlogs" => "audit-logs",
        b"branchaliases" => "branch_aliases",
        b"branches" => "branches",
        b"branchescompare" => "branches_compare",
        b"branchesmerge" => "branches_merge",
        b"branchesqueue" => "branches_queue",
        b"bulk" => "bulk",
        b"clone" => "clone",
        b"contenttype" => "content_type",
        b"contenttypes" => "content_types",
        b"delete" => "delete",
        b"deliverytokens" => "delivery_tokens",
        b"deploy" => "deploy",
        b"descendants" => "descendants",
        b"disable" => "disable",
        b"enable" => "enable",
        b"entries" => "entries",
        b"environments" => "environments",
        b"executions" => "executions",
        b"export" => "export",
        b"extensions" => "extensions",
        b"folders" => "folders",
        b"globalfields" => "global_fields",
        b"import" => "import",
        b"item" => "item",
        b"items" => "items",
        b"jobs" => "jobs",
        b"labels" => "labels",
        b"locales" => "locales",
        b"logs" => "logs",
        b"managementtokens" => "management_tokens",
        b"move" => "move",
        b"name" => "name",
        b"organizations" => "organizations",
        b"publish" => "publish",
        b"publishingrules" => "publishing_rules",
        b"publishqueue" => "publish-queue",
        b"references" => "references",
        b"release" => "release",
        b"releases" => "releases",
        b"reset" => "reset",
        b"retry" => "retry",
        b"roles" => "roles",
        b"settings" => "settings",
        b"share" => "share",
        b"stacks" => "stacks",
        b"taxonomies" => "taxonomies",
        b"terms" => "terms",
        b"transferownership" => "transfer_ownership",
        b"unlocalize" => "unlocalize",
        b"unpublish" => "unpublish",
        b"unschedule" => "unschedule",
        b"unshare" => "unshare",
        b"updateitems" => "update_items",
        b"user" => "user",
        b"users" => "users",
        b"usersession" => "user-session",
        b"v3" => "v3",
        b"variants" => "variants",
        b"versions" => "versions",
        b"webhooks" => "webhooks",
        b"workflow" => "workflow",
        b"workflows" => "workflows",
        _ => return None,
    })
}

/// What `path.split('/')` yields. `str::split` runs a general substring searcher
/// (a `memchr` call per segment); CMA path segments are a few bytes long, and a byte
/// scan costs a quarter of that on every request.
fn split_slash(path: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(path);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.bytes().position(|b| b == b'/') {
            Some(at) => {
                rest = current.get(at + 1..);
                current.get(..at)
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn op(module: Module, access: Access) -> Operation {
    Operation { module, access, rule: Rule::Plain }
}

fn with_rule(module: Module, access: Access, rule: Rule) -> Operation {
    Operation { module, access, rule }
}

fn unknown() -> Operation {
    with_rule(Module::Unknown, Access::Write, Rule::Deny)
}

fn never(module: Module, access: Access) -> Operation {
    with_rule(module, access, Rule::Deny)
}

/// The table of `cma-api.md`. Each arm is one row.
fn route(method: &Method, read: bool, default: Access, segs: &[&str]) -> Operation {
    use Access::{Read, Write};
    use Module as M;
    match segs {
        // content types and entries
        ["content_types"] | ["content_types", _] => op(M::ContentType, default),
        ["content_types", _, "references" | "export"] => op(M::ContentType, default),
        ["content_types", _, "entries", rest @ ..] => entry(method, default, rest),
        // global fields
        ["global_fields"] | ["global_fields", _] | ["global_fields", _, "export"] => op(M::GlobalField, default),
        // assets
        ["assets"] | ["assets", _] | ["assets", "folders", _] => op(M::Asset, default),
        ["assets", _, "publish" | "unpublish" | "versions" | "references"] => op(M::Asset, default),
        ["assets", _, "versions", _, "name"] => op(M::Asset, default),
        // simple collections
        ["labels"] | ["labels", _] => op(M::Label, default),
        ["extensions"] | ["extensions", _] => op(M::Extension, default),
        ["environments"] | ["environments", _] => op(M::Environment, default),
        ["locales"] | ["locales", _] => op(M::Locale, default),
        ["roles"] | ["roles", _] => op(M::Role, default),
        // releases
        ["releases"] | ["releases", _] => op(M::Release, default),
        ["releases", _, "items" | "item" | "update_items" | "deploy" | "clone"] => op(M::Release, default),
        ["releases", _, "items", "move"] => op(M::Release, default),
        // webhooks
        ["webhooks"] | ["webhooks", _] => op(M::Webhook, default),
        ["webhooks", _, "executions" | "export" | "retry" | "logs"] => op(M::Webhook, default),
        // publish rules (before workflows/{x} so the literal wins)
        // The approvers rule applies to every write method, whichever the CMA defines.
        ["workflows", "publishing_rules"] | ["workflows", "publishing_rules", _] => {
            let rule = if read { Rule::Plain } else { Rule::PublishRuleApprovers };
            with_rule(M::PublishRule, default, rule)
        }
        ["workflows", "content_type", _] if read => op(M::PublishRule, Read),
        ["workflows", "content_type", _] => unknown(),
        // workflows: enable/disable change state although they are GETs
        ["workflows"] | ["workflows", _] => op(M::Workflow, default),
        ["workflows", _, "enable" | "disable"] if read => op(M::Workflow, Write),
        ["workflows", _, "enable" | "disable"] => unknown(),
        // audit log: read-only
        ["audit-logs"] | ["audit-logs", _] if read => op(M::AuditLog, Read),
        ["audit-logs"] | ["audit-logs", _] => never(M::AuditLog, Write),
        // publish queue: unschedule changes state although it is a GET
        ["publish-queue"] | ["publish-queue", _] => op(M::PublishQueue, default),
        ["publish-queue", _, "unschedule"] if read => op(M::PublishQueue, Write),
        ["publish-queue", _, "unschedule"] => unknown(),
        // bulk
        ["bulk", "workflow"] => never(M::Bulk, default),
        ["bulk", "publish" | "unpublish" | "delete"] | ["bulk", "release", "items" | "update_items"] => {
            with_rule(M::Bulk, default, Rule::Bulk)
        }
        ["bulk", "jobs", _] | ["bulk", "jobs", _, "items"] if read => with_rule(M::Bulk, Read, Rule::Bulk),
        // taxonomies
        ["taxonomies"] | ["taxonomies", _] => op(M::Taxonomy, default),
        ["taxonomies", _, "terms" | "export" | "locales"] | ["taxonomies", _, "terms", _] => op(M::Taxonomy, default),
        ["taxonomies", _, "terms", _, "ancestors" | "descendants" | "locales"] => op(M::Taxonomy, default),
        ["stacks", rest @ ..] => stacks(method, read, default, rest),
        ["organizations", ..] => never(M::Organization, default),
        ["user-session"] if matches!(*method, Method::POST | Method::DELETE) => {
            with_rule(M::UserSession, Write, Rule::Login)
        }
        ["user-session", ..] | ["user", ..] => never(M::UserSession, default),
        _ => unknown(),
    }
}

/// `/v3/content_types/{ct}/entries/...`.
fn entry(method: &Method, default: Access, rest: &[&str]) -> Operation {
    use Module::Entry;
    match rest {
        [] | [_] => op(Entry, default),
        [_, "workflow"] if *method == Method::POST => with_rule(Entry, Access::Write, Rule::EntryWorkflow),
        [_, "workflow"] => unknown(),
        [_, "publish" | "unpublish" | "versions" | "references" | "locales" | "export"]
        | [_, "unlocalize" | "import" | "variants"]
        | [_, "variants", _]
        | [_, "versions", _, "name"] => op(Entry, default),
        _ => unknown(),
    }
}

/// `/v3/stacks/...`: split into stack, users, tokens, branches, branch aliases.
fn stacks(method: &Method, read: bool, default: Access, rest: &[&str]) -> Operation {
    use Access::{Read, Write};
    use Module as M;
    match rest {
        [] => never(M::Stack, default),
        ["settings"] | ["settings", "reset"] | ["transfer_ownership"] | ["accept_ownership", _] => {
            never(M::Stack, default)
        }
        ["share" | "unshare"] => never(M::UserShare, default),
        // `management_tokens` is decided in `classify`: it is the gateway's own.
        ["delivery_tokens", ..] => never(M::Tokens, default),
        ["users"] if read => op(M::User, Read),
        ["users", "roles"] if matches!(*method, Method::POST | Method::PUT) => op(M::User, Write),
        ["branches"] | ["branches", _] if read => op(M::Branch, Read),
        ["branches"] | ["branches", _] => never(M::Branch, Write),
        ["branches_compare", ..] if read => with_rule(M::Branch, Read, Rule::BranchPair),
        ["branches_queue"] | ["branches_queue", _] if read => op(M::Branch, Read),
        ["branches_merge"] if *method == Method::POST => with_rule(M::Branch, Write, Rule::BranchPair),
        ["branch_aliases"] | ["branch_aliases", _] if read => op(M::BranchAlias, Read),
        ["branch_aliases", _] => never(M::BranchAlias, Write),
        _ => unknown(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_slash_is_str_split() {
        for path in ["", "/", "//", "a", "a/", "/a", "a//b", "content_types/blog_post/entries", "é/ü/"] {
            assert_eq!(split_slash(path).collect::<Vec<_>>(), path.split('/').collect::<Vec<_>>(), "{path:?}");
        }
    }

    fn c(method: &str, path: &str) -> Operation {
        classify(&Method::from_bytes(method.as_bytes()).unwrap(), path).unwrap()
    }

    /// A segment that reads as a word of the table (in any case, with any separators,
    /// escaped ones too, singular, or before a suffix) is ambiguous where that reading
    /// routes the request elsewhere (the thirteenth, fourteenth and sixteenth outside
    /// probes); where it routes the same, it is served as written (an environment
    /// `Release`, a content type `audit_logs`: the fourteenth and seventeenth).
    #[test]
    fn segments_read_as_words_are_ambiguous_where_they_route_elsewhere() {
        let ambiguous = |method: &str, path: &str| {
            classify(&Method::from_bytes(method.as_bytes()).unwrap(), path)
                == Err(GatewayError::BadRequest(crate::error::BadRequest::AmbiguousPath))
        };
        for segment in [
            "publishing-rules",
            "publishingRules",
            "publishingrules",
            "Publishing_Rules",
            "publishing__rules",
            "publishing.rules",
            "publishing_rules_",
            "publishing_rules.json",
            "%20publishing_rules",
            "publishing%20rules",
            "publishing%22rules",
            "publishing_rule",
            "Publishing-Rule",
        ] {
            assert!(ambiguous("POST", &format!("/v3/workflows/{segment}")), "{segment}");
            assert!(ambiguous("GET", &format!("/v3/workflows/{segment}/x")), "{segment}");
        }
        for (method, path) in [
            ("GET", "/v3/assets/Folders/x"),
            ("GET", "/v3/assets/fol-ders/x"),
            ("GET", "/v3/assets/folder/x"),
            ("GET", "/v3/stacks/%20management_tokens"),
            ("GET", "/v3/stacks/setting"),
            ("GET", "/v3/bulk/Jobs/x"),
            ("GET", "/v3/Content_Types"),
            ("GET", "/v3/content_types.json"),
            ("GET", "/v3/content_types/blog/Entries"),
            ("GET", "/v3/content_types/blog/entries.json"),
            ("POST", "/v3/content_types/blog/entries/e1/Workflow"),
            ("POST", "/v3/content_types/blog/entries/e1/work-flow"),
            ("GET", "/v3/Workflows/publishing_rules"),
            // Each segment alone reads the same; both together reach the entries.
            ("GET", "/v3/Content_Types/blog/Entries"),
            ("GET", "/v3/WORKFLOWS/x/Enable"),
        ] {
            assert!(ambiguous(method, path), "{method} {path}");
        }
        for (method, path) in [
            ("GET", "/v3/environments/Release"),
            ("GET", "/v3/environments/Deploy"),
            ("PUT", "/v3/labels/Publish"),
            ("GET", "/v3/content_types/Entries"),
            ("GET", "/v3/content_types/audit_logs/entries"),
            ("GET", "/v3/content_types/work_flow"),
            ("GET", "/v3/environments/publish_queue"),
            ("GET", "/v3/environments/user_session"),
            ("GET", "/v3/content_types/blog/entries/BltAbC123"),
            ("GET", "/v3/workflows/publishing_rule_1"),
            ("GET", "/v3/workflows/workflowx"),
            ("GET", "/v3/assets/RT"),
        ] {
            assert!(classify(&Method::from_bytes(method.as_bytes()).unwrap(), path).is_ok(), "{method} {path}");
        }
        assert_eq!(readings("publishing_rules.json"), [None, None, Some("publishing_rules"), None]);
        assert_eq!(readings("Publishing-Rule"), [None, Some("publishing_rules"), None, None]);
        assert_eq!(readings("%20Entries"), [Some("entries"), None, None, None]);
        assert_eq!(readings("entry.json"), [None; 4]);
        assert_eq!(readings("blt0123456789abcdef0"), [None; 4]);
        // Paths two rows of the table match, with different operations (the eighteenth
        // outside probe), in any spelling.
        for path in [
            "/v3/workflows/publishing_rules/enable",
            "/v3/workflows/content_type/disable",
            "/v3/workflows/content_type/Enable",
            "/v3/workflows/Publishing-Rules/disable",
        ] {
            assert!(ambiguous("GET", path), "{path}");
        }
        // More segments read as words than are tried: refused.
        assert!(ambiguous("GET", "/v3/Content_Types/Entries/Entries/Entries"));
        // Every word of the table is one, folds to itself and has no other reading.
        for word in KEYWORDS {
            assert!(is_word(word), "{word}");
            assert_eq!(folds_to_word(word), Some(word));
            assert_eq!(readings(word), [None; 4]);
        }
    }

    #[test]
    fn outside_v3_is_not_found() {
        for p in ["/", "/v3", "/v2/content_types", "/V3/content_types", "/v3content_types"] {
            assert_eq!(classify(&Method::GET, p), Err(GatewayError::NotFound), "{p}");
        }
    }

    #[test]
    fn state_changing_gets_are_writes() {
        assert_eq!(c("GET", "/v3/workflows/x/enable").access, Access::Write);
        assert_eq!(c("GET", "/v3/workflows/x/disable").access, Access::Write);
        assert_eq!(c("GET", "/v3/publish-queue/x/unschedule").access, Access::Write);
        assert_eq!(c("GET", "/v3/workflows/x").access, Access::Read);
    }

    #[test]
    fn stacks_prefix_splits_into_modules() {
        assert_eq!(c("GET", "/v3/stacks").module, Module::Stack);
        assert_eq!(c("GET", "/v3/stacks/users").module, Module::User);
        assert_eq!(c("PUT", "/v3/stacks/users/roles").module, Module::User);
        assert_eq!(c("POST", "/v3/stacks/users").rule, Rule::Deny);
        assert_eq!(c("GET", "/v3/stacks/management_tokens").rule, Rule::TokenApi);
        assert_eq!(c("POST", "/v3/stacks/management_tokens/blt1/regenerate").rule, Rule::TokenApi);
        assert_eq!(c("GET", "/v3/stacks/management_tokens/audit").rule, Rule::TokenApi);
        for (m, p) in [
            ("GET", "/v3/stacks/management_tokens/blt1/regenerate"),
            ("POST", "/v3/stacks/management_tokens/blt1/rotate"),
            ("POST", "/v3/stacks/management_tokens/blt1/regenerate/x"),
            ("POST", "/v3/stacks/management_tokens/blt1/Regenerate"),
            ("PUT", "/v3/stacks/management_tokens/audit"),
            ("DELETE", "/v3/stacks/management_tokens/audit"),
            ("POST", "/v3/stacks/management_tokens/audit/x"),
        ] {
            assert_eq!(classify(&Method::from_bytes(m.as_bytes()).unwrap(), p), Err(GatewayError::NotFound), "{m} {p}");
        }
        assert_eq!(c("GET", "/v3/stacks/delivery_tokens/x/preview_token").module, Module::Tokens);
        assert_eq!(c("GET", "/v3/stacks/branches/main").module, Module::Branch);
        assert_eq!(c("POST", "/v3/stacks/branches").rule, Rule::Deny);
        assert_eq!(c("POST", "/v3/stacks/branches_merge").access, Access::Write);
        assert_eq!(c("POST", "/v3/stacks/branches_merge").rule, Rule::BranchPair);
        assert_eq!(c("GET", "/v3/stacks/branches_compare/content_types").rule, Rule::BranchPair);
        assert_eq!(c("GET", "/v3/stacks/branches_queue").rule, Rule::Plain);
        assert_eq!(c("PUT", "/v3/stacks/branch_aliases/deploy").rule, Rule::Deny);
    }

    #[test]
    fn audit_log_is_read_only() {
        assert_eq!(c("GET", "/v3/audit-logs").rule, Rule::Plain);
        assert_eq!(c("POST", "/v3/audit-logs").rule, Rule::Deny);
        assert_eq!(c("DELETE", "/v3/audit-logs/x").rule, Rule::Deny);
    }

    #[test]
    fn body_rules_are_flagged() {
        assert!(c("POST", "/v3/content_types/ct/entries/e/workflow").needs_body());
        assert!(c("POST", "/v3/workflows/publishing_rules").needs_body());
        assert!(c("PUT", "/v3/workflows/publishing_rules/x").needs_body());
        assert!(!c("GET", "/v3/workflows/publishing_rules/x").needs_body());
        assert_eq!(c("POST", "/v3/bulk/workflow").rule, Rule::Deny);
        assert_eq!(c("POST", "/v3/bulk/publish").rule, Rule::Bulk);
    }

    #[test]
    fn deep_or_unknown_paths_fail_closed() {
        assert_eq!(c("GET", "/v3/a/b/c/d/e/f/g/h/i").module, Module::Unknown);
        assert_eq!(c("GET", "/v3/content_types/ct/entries/e/bogus").module, Module::Unknown);
        assert_eq!(c("GET", "/v3/nothing").module, Module::Unknown);
    }

    #[test]
    fn module_index_matches_all() {
        for (i, m) in Module::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
        }
    }

    #[test]
    fn module_bits_are_distinct() {
        let mut set = ModuleSet::EMPTY;
        for &m in Module::SCOPED {
            assert!(!set.contains(m));
            set.insert(m);
        }
        assert_eq!(set, ModuleSet::ALL);
        assert!(!ModuleSet::ALL.contains(Module::Stack));
        assert!(!ModuleSet::ALL.contains(Module::Unknown));
    }
}

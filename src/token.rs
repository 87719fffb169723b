//! Management tokens: the record, its scope, and how a scope compiles into the
//! bitsets and branch lists the request path checks.

use crate::cma::{Module, ModuleSet};
use crate::error::FieldErrors;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{Date, OffsetDateTime};

/// One entry of a token's `scope`, as in the CMA token API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeEntry {
    pub module: String,
    #[serde(default)]
    pub acl: Acl,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch_aliases: Option<Vec<String>>,
}

/// Read / write grant of a scope entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acl {
    #[serde(default)]
    pub read: bool,
    #[serde(default)]
    pub write: bool,
}

/// A token's custom rate (`None` on the token = organisation default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub read_per_second: u32,
    pub write_per_second: u32,
}

/// The `branches` value that grants every branch and alias of a stack ("All Branches").
pub const ALL_BRANCHES: &str = "$all";

/// What a scope grants, in the form the hot path reads.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Grants {
    pub read: ModuleSet,
    pub write: ModuleSet,
    /// `branches = ["$all"]`: every branch and alias, including ones the stack's config
    /// does not list (created later; the backend decides whether they exist). A flag, so
    /// the branch check never compares the header with `"$all"`.
    pub all_branches: bool,
    pub branches: Box<[Box<str>]>,
    pub aliases: Box<[Box<str>]>,
}

/// The stack facts a scope is validated against.
pub trait BranchCatalog {
    fn has_branch(&self, name: &str) -> bool;
    fn has_alias(&self, name: &str) -> bool;
}

/// Compiles a scope, collecting every problem under a field key
/// (`scope[2].module`, `scope.branch_or_alias`, ...). A branch or alias the stack does
/// not have is one of them: what the API and the config accept names only what exists.
pub fn compile_scope(entries: &[ScopeEntry], stack: &dyn BranchCatalog) -> Result<Grants, FieldErrors> {
    compile(entries, stack, true).map(|(grants, _)| grants)
}

/// Compiles a stored token's scope against the stack as configured now. A branch or
/// alias the stack no longer has (a reload removed it) grants nothing, and the rest of
/// the scope stands: the token stays a live credential (suspendable, not a guess), and
/// a request naming the lost branch is refused as any unknown branch is. The flag says
/// whether a name was lost (or a list stored empty), for the caller to log.
pub fn compile_stored_scope(entries: &[ScopeEntry], stack: &dyn BranchCatalog) -> Result<(Grants, bool), FieldErrors> {
    compile(entries, stack, false)
}

fn compile(entries: &[ScopeEntry], stack: &dyn BranchCatalog, strict: bool) -> Result<(Grants, bool), FieldErrors> {
    let mut errors = FieldErrors::new();
    let mut lost = false;
    let mut grants = Grants::default();
    let (mut branches, mut aliases) = (Vec::new(), Vec::new());
    let mut has_branch_entry = false;
    for (i, entry) in entries.iter().enumerate() {
        let mut err = |field: &str, msg: String| {
            errors.entry(format!("scope[{i}].{field}")).or_default().push(msg);
        };
        match (entry.module.as_str(), &entry.branches, &entry.branch_aliases) {
            ("branch", Some(list), None) if list.iter().any(|b| b == ALL_BRANCHES) => {
                has_branch_entry = true;
                // "$all" next to named branches would be either redundant or a typo
                // for something narrower: refused rather than guessed at.
                if list.len() == 1 {
                    grants.all_branches = true;
                } else {
                    err("branches", format!("'{ALL_BRANCHES}' must be the only element of branches."));
                }
            }
            ("branch", Some(list), None) => {
                has_branch_entry = true;
                if list.is_empty() {
                    if strict {
                        err("branches", "must name at least one branch.".into());
                    }
                    lost = true;
                }
                for (at, b) in list.iter().enumerate() {
                    if stack.has_branch(b) {
                        branches.push(b.as_str().into());
                    } else if strict {
                        err(
                            "branches",
                            format!("the branch at index {at} (counted from 0) does not exist in this stack."),
                        );
                    } else {
                        lost = true;
                    }
                }
            }
            ("branch_alias", None, Some(list)) => {
                has_branch_entry = true;
                if list.is_empty() {
                    if strict {
                        err("branch_aliases", "must name at least one alias.".into());
                    }
                    lost = true;
                }
                for (at, a) in list.iter().enumerate() {
                    if stack.has_alias(a) {
                        aliases.push(a.as_str().into());
                    } else if strict {
                        err(
                            "branch_aliases",
                            format!("the alias at index {at} (counted from 0) does not exist in this stack."),
                        );
                    } else {
                        lost = true;
                    }
                }
            }
            ("branch", Some(_), Some(_)) => {
                has_branch_entry = true;
                err("branch_aliases", "only allowed on module 'branch_alias'.".into());
            }
            (_, Some(_), _) => err("branches", "only allowed on module 'branch'.".into()),
            (_, _, Some(_)) => err("branch_aliases", "only allowed on module 'branch_alias'.".into()),
            ("$all", None, None) => grant(&mut grants, ModuleSet::ALL, entry.acl),
            (name, None, None) => match Module::from_scope_name(name) {
                Some(m) => {
                    let mut set = ModuleSet::EMPTY;
                    set.insert(m);
                    grant(&mut grants, set, entry.acl);
                }
                None => err("module", "unknown module.".to_owned()),
            },
        }
    }
    if !has_branch_entry {
        errors
            .entry("scope.branch_or_alias".into())
            .or_default()
            .push("at least one branch or branch alias entry is required.".into());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // A stored scope whose every branch and alias is gone (or one stored with empty
    // lists, before the API refused them) grants nothing at all: the API creates no
    // token without an existing branch, so neither does a reload (its global modules,
    // which the branch check does not reach, included).
    if branches.is_empty() && aliases.is_empty() && !grants.all_branches {
        (grants.read, grants.write) = (ModuleSet::EMPTY, ModuleSet::EMPTY);
    }
    grants.branches = branches.into();
    grants.aliases = aliases.into();
    Ok((grants, lost))
}

fn grant(grants: &mut Grants, set: ModuleSet, acl: Acl) {
    if acl.read {
        grants.read = grants.read.union(set);
    }
    if acl.write {
        grants.write = grants.write.union(set);
    }
}

/// SHA-256 of a presented secret.
pub fn hash_secret(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

/// Parses 64 hex characters into a digest.
pub fn parse_digest(hex_str: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_str, &mut out).ok()?;
    Some(out)
}

/// An expiry as given (`"2027-01-01"` or RFC 3339) and the instant it takes effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expiry {
    pub text: String,
    /// Unix seconds; the token is expired when `now >= at`.
    pub at: i64,
}

/// The first instant no expiry may reach: 10000-01-01T00:00:00Z. A four-digit year
/// cannot name it, so an instant whose offset carries it there would come back in a
/// form no RFC 3339 reader takes.
const EXPIRY_END: i64 = 253_402_300_800;

/// Parses `expires_on` as the API and the config take it: `YYYY-MM-DD` (expiring at
/// 00:00:00 UTC at the start of that date) or an RFC 3339 instant,
/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)`, before the year 10000. The text is
/// kept and shown as given, so its shape is checked byte by byte first: the `time`
/// crate's reader also takes other separators and signed years, which clients with
/// strict readers could not read back.
pub fn parse_expiry(text: &str) -> Result<Expiry, String> {
    const SHAPE: &str =
        "must be a date (YYYY-MM-DD) or an RFC 3339 instant (YYYY-MM-DDTHH:MM:SSZ) before the year 10000.";
    if !has_expiry_shape(text.as_bytes()) {
        return Err(SHAPE.into());
    }
    match read_expiry(text) {
        Ok(e) if e.at < EXPIRY_END => Ok(e),
        _ => Err(SHAPE.into()),
    }
}

/// Whether `t` is `YYYY-MM-DD`, or that, `T`, `HH:MM:SS`, an optional fraction of 1 to 9
/// digits and `Z` or a `+HH:MM`/`-HH:MM` offset: the spelling strict readers take (Go's
/// `time.RFC3339`, Python's `fromisoformat`, JavaScript's `Date`). Values are checked by
/// the parser, except the leap second `:60`: the parser takes it at `23:59:60`, those
/// readers (the console's included) refuse it.
fn has_expiry_shape(t: &[u8]) -> bool {
    // `d` a digit; any other byte stands for itself.
    fn fits(t: &[u8], pattern: &[u8]) -> bool {
        t.len() == pattern.len()
            && t.iter().zip(pattern).all(|(&b, &p)| if p == b'd' { b.is_ascii_digit() } else { b == p })
    }
    let (Some(date), rest) = (t.get(..10), t.get(10..).unwrap_or_default()) else { return false };
    if !fits(date, b"dddd-dd-dd") {
        return false;
    }
    let Some((&sep, rest)) = rest.split_first() else { return true };
    let (Some(time), mut rest) = (rest.get(..8), rest.get(8..).unwrap_or_default()) else { return false };
    if sep != b'T' || !fits(time, b"dd:dd:dd") || time[6] > b'5' {
        return false;
    }
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if !(1..=9).contains(&digits) {
            return false;
        }
        rest = &fraction[digits..];
    }
    rest == b"Z" || (matches!(rest.first(), Some(b'+' | b'-')) && fits(&rest[1..], b"dd:dd"))
}

/// Reads an expiry already stored: as [`parse_expiry`] but without its shape check, so
/// a record written before that check still loads (its text is shown as it was).
pub fn read_expiry(text: &str) -> Result<Expiry, String> {
    let date_format = format_description!("[year]-[month]-[day]");
    let at = if let Ok(date) = Date::parse(text, &date_format) {
        date.midnight().assume_utc().unix_timestamp()
    } else if let Ok(instant) = OffsetDateTime::parse(text, &Rfc3339) {
        instant.unix_timestamp()
    } else {
        return Err("must be a date (YYYY-MM-DD) or an RFC 3339 instant.".into());
    };
    Ok(Expiry { text: text.to_owned(), at })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Cat;
    impl BranchCatalog for Cat {
        fn has_branch(&self, n: &str) -> bool {
            matches!(n, "main" | "development")
        }
        fn has_alias(&self, n: &str) -> bool {
            n == "deploy"
        }
    }

    fn entry(module: &str, read: bool, write: bool) -> ScopeEntry {
        ScopeEntry { module: module.into(), acl: Acl { read, write }, branches: None, branch_aliases: None }
    }

    fn branches(list: &[&str]) -> ScopeEntry {
        ScopeEntry { branches: Some(list.iter().map(|s| s.to_string()).collect()), ..entry("branch", true, false) }
    }

    /// A stored scope against the stack as configured now: a lost name grants nothing,
    /// the rest stands; with every name lost, nothing at all is granted.
    #[test]
    fn a_stored_scope_keeps_what_the_stack_still_has() {
        let scope = [entry("$all", true, true), branches(&["main", "gone"])];
        assert!(compile_scope(&scope, &Cat).is_err(), "the API and the config name what exists");
        let (grants, lost) = compile_stored_scope(&scope, &Cat).unwrap();
        assert!(lost);
        assert_eq!(&*grants.branches, &["main".into()] as &[Box<str>]);
        assert_eq!(grants.write, ModuleSet::ALL);
        let (grants, lost) = compile_stored_scope(&[entry("$all", true, true), branches(&["gone"])], &Cat).unwrap();
        assert!(lost && grants.branches.is_empty());
        assert_eq!((grants.read, grants.write), (ModuleSet::EMPTY, ModuleSet::EMPTY), "nothing left: nothing granted");
        let (_, lost) = compile_stored_scope(&[entry("$all", true, false), branches(&["main"])], &Cat).unwrap();
        assert!(!lost);
        // A branch entry that also lists aliases: the stray key is named, and the
        // entry still counts as the branch entry (the thirty-ninth probe).
        let both = ScopeEntry { branch_aliases: Some(vec!["deploy".into()]), ..branches(&["main"]) };
        let errs = compile_scope(&[entry("$all", true, true), both], &Cat).unwrap_err();
        assert_eq!(errs.keys().collect::<Vec<_>>(), ["scope[1].branch_aliases"], "{errs:?}");
        // An empty list names nothing: refused by the API and the config (the
        // thirty-seventh probe), and a stored one grants nothing.
        let empty = [entry("$all", true, true), branches(&[])];
        let errs = compile_scope(&empty, &Cat).unwrap_err();
        assert!(errs.contains_key("scope[1].branches"), "{errs:?}");
        let (grants, lost) = compile_stored_scope(&empty, &Cat).unwrap();
        assert_eq!((grants.read, grants.write), (ModuleSet::EMPTY, ModuleSet::EMPTY));
        assert!(lost, "counted and logged as a lost name is");
    }

    #[test]
    fn names_that_hide_characters_are_found() {
        for hidden in [
            "ro\u{200b}",
            "a\u{1b}[2Jb",
            "a\u{0}b",
            "abc\u{202e}fed",
            "tb\u{3164}",
            "a\u{115f}",
            "a\u{ffa0}",
            "\u{2800}",
            "a\u{34f}b",
            "a\u{17b4}",
            "a\u{fe0f}",
            "a\u{e0100}",
            "a\u{e0041}",
            "a\u{fff9}",
            "a\u{1d173}",
            "a\u{13430}",
            "a\u{1bca0}",
            "a\u{2028}b",
            "a\u{2029}b",
            "a\u{a0}b",
            "a\u{3000}b",
            "a\u{1680}b",
            "a\u{fdd0}",
            "a\u{fffe}",
            "a\u{ffff}",
            "a\u{1fffe}",
            "a\u{e000}",
            "a\u{10fffd}",
            "a\nb",
        ] {
            assert!(hides_characters(hidden, false), "{hidden:?}");
        }
        for shown in ["ci export", "\u{540d}\u{524d}", "d\u{e9}j\u{e0} vu", "\u{1f600}", "\u{442}b", "cafe\u{301}"] {
            assert!(!hides_characters(shown, false), "{shown:?}");
        }
        assert!(!hides_characters("first line\r\n\tsecond", true));
        assert!(hides_characters("bell\u{7}", true));
    }

    #[test]
    fn all_and_module_entries_union() {
        let g = compile_scope(&[entry("$all", true, false), entry("entry", true, true), branches(&["main"])], &Cat)
            .unwrap();
        assert_eq!(g.read, ModuleSet::ALL);
        assert!(g.write.contains(Module::Entry));
        assert!(!g.write.contains(Module::Asset));
        assert_eq!(&*g.branches, &["main".into()] as &[Box<str>]);
    }

    #[test]
    fn scope_errors_are_collected() {
        let scope = [entry("nope", true, false), branches(&["*", "main"])];
        let errs = compile_scope(&scope, &Cat).unwrap_err();
        assert!(errs.contains_key("scope[0].module"), "{errs:?}");
        assert!(errs.contains_key("scope[1].branches"), "{errs:?}");
        let errs = compile_scope(&[entry("$all", true, true)], &Cat).unwrap_err();
        assert!(errs.contains_key("scope.branch_or_alias"));
        // Each unknown name is pointed at by its place in the list the caller sent, never
        // repeated (a config error reaches the log and `/reload`'s answer).
        let errs = compile_scope(&[entry("$all", true, false), branches(&["main", "n0pe", "x"])], &Cat).unwrap_err();
        assert_eq!(
            errs.get("scope[1].branches").map(Vec::as_slice),
            Some(
                &[
                    "the branch at index 1 (counted from 0) does not exist in this stack.".to_owned(),
                    "the branch at index 2 (counted from 0) does not exist in this stack.".to_owned()
                ][..]
            ),
            "{errs:?}"
        );
    }

    #[test]
    fn all_branches_is_a_flag_and_must_stand_alone() {
        let g = compile_scope(&[entry("$all", true, false), branches(&["$all"])], &Cat).unwrap();
        assert!(g.all_branches);
        assert!(g.branches.is_empty(), "kept as a flag, not as a branch named $all");
        let g = compile_scope(&[entry("$all", true, false), branches(&["main"])], &Cat).unwrap();
        assert!(!g.all_branches);
        for list in [&["$all", "main"][..], &["main", "$all"], &["$all", "$all"]] {
            let errs = compile_scope(&[entry("$all", true, false), branches(list)], &Cat).unwrap_err();
            assert_eq!(
                errs.get("scope[1].branches").map(Vec::as_slice),
                Some(&["'$all' must be the only element of branches.".to_owned()][..]),
                "{list:?}: {errs:?}"
            );
        }
        // "*" is no wildcard: an unknown branch like any other.
        let errs = compile_scope(&[entry("$all", true, false), branches(&["*"])], &Cat).unwrap_err();
        assert!(errs.contains_key("scope[1].branches"), "{errs:?}");
        // "$all" is a branch-list value only, not an alias wildcard.
        let alias_all = ScopeEntry { branch_aliases: Some(vec!["$all".into()]), ..entry("branch_alias", true, false) };
        let errs = compile_scope(&[entry("$all", true, false), alias_all], &Cat).unwrap_err();
        assert!(errs.contains_key("scope[1].branch_aliases"), "{errs:?}");
    }

    #[test]
    fn expiry_date_is_midnight_utc() {
        let e = parse_expiry("2027-01-01").unwrap();
        assert_eq!(e.at, 1_798_761_600);
        assert_eq!(parse_expiry("2027-01-01T00:00:00Z").unwrap().at, e.at);
        assert_eq!(parse_expiry("2027-01-01T01:00:00+01:00").unwrap().at, e.at);
        assert!(parse_expiry("01/01/2027").is_err());
        assert!(parse_expiry("2027-02-30").is_err());
        // RFC 3339's shape only, as given; years 1 to 9999 (the thirty-seventh probe).
        assert_eq!(parse_expiry("2027-01-01T00:00:00.123456789Z").unwrap().at, e.at);
        assert_eq!(parse_expiry("2026-12-31T19:00:00-05:00").unwrap().at, e.at);
        for odd in [
            "2027-01-01_00:00:00Z",
            "2027-01-01 00:00:00Z",
            "-2027-01-01",
            "+2027-01-01",
            "12027-01-01",
            "2027-1-01",
            "2027-01-01T00:00:00",
            "2027-01-01T00:00:00.Z",
            "2027-01-01T00:00:00+0100",
            "2027-01-01T00:00Z",
            "2027-01-01T00:00:00Z ",
            " 2027-01-01",
            "9999-12-31T23:59:59-23:59",
            "2027-01-01T24:00:00Z",
            "2027-01-01t00:00:00Z",
            "2027-01-01T00:00:00z",
            "2027-01-01T00:00:00.1234567890Z",
            "\u{ff12}\u{ff10}\u{ff12}\u{ff17}-01-01",
            "2027\u{2010}01-01",
            "2027-01-01T00:00:00\u{2212}05:00",
            "2026-12-31T23:59:60Z",
            "2028-02-29T23:59:60Z",
            "2027-06-30T23:59:60+00:00",
        ] {
            assert!(parse_expiry(odd).is_err(), "{odd}");
        }
        assert!(parse_expiry("9999-12-31T23:59:59Z").is_ok());
        // A record stored before the shape check still loads.
        assert_eq!(read_expiry("2027-01-01 00:00:00Z").unwrap().at, e.at);
    }
}

/// Where a token record comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `[[stacks.tokens]]` in the config file: read-only through the API.
    Config,
    /// Created through the token API and kept in the store.
    Store,
}

/// A token as stored and listed (never holds the secret, only its hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub uid: String,
    /// The stack's api key.
    pub stack: String,
    pub name: String,
    pub description: String,
    pub secret_sha256: [u8; 32],
    /// Shared by the records a store read finds with the same stored scope.
    pub scope: std::sync::Arc<[ScopeEntry]>,
    pub expires_on: Option<Expiry>,
    pub is_email_notification_enabled: bool,
    pub rate_limit: Option<RateLimit>,
    pub created_by: String,
    pub updated_by: String,
    /// RFC 3339.
    pub created_at: String,
    pub updated_at: String,
    /// Unix seconds of the expiry notice, once sent.
    pub expiry_notified_at: Option<i64>,
    /// `false` while the token is suspended: it stays in the store (and counts toward
    /// the per-stack cap) so an operator can stop a leaked or misused token at once and
    /// restore it later without handing out a new secret.
    pub enabled: bool,
    /// The secret this token had before it was last regenerated, while its grace
    /// period lasts, so clients can move to the new secret without an outage.
    pub previous_secret: Option<PreviousSecret>,
    pub origin: Origin,
}

/// A regenerated token's old secret (its hash only) and when it stops working.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreviousSecret {
    pub sha256: [u8; 32],
    /// Unix seconds; the old secret is refused when `now >= until`.
    pub until: i64,
}

impl TokenRecord {
    /// Every secret hash that names this token: the current one, and the previous one
    /// while it is kept (the snapshot maps both to the token).
    pub fn hashes(&self) -> Vec<[u8; 32]> {
        let mut out = vec![self.secret_sha256];
        out.extend(self.previous_secret.map(|p| p.sha256));
        out
    }
}

/// Random lower-case hex from the OS CSPRNG.
fn random_hex<const N: usize>() -> std::io::Result<String> {
    let mut bytes = [0u8; N];
    getrandom::getrandom(&mut bytes).map_err(std::io::Error::other)?;
    Ok(hex::encode(bytes))
}

/// A new token secret: `cs` + 32 hex (128 bits).
pub fn new_secret() -> std::io::Result<String> {
    Ok(format!("cs{}", random_hex::<16>()?))
}

/// Whether a token's name (or, with `breaks`, its description, which may hold line
/// breaks and tabs) holds a character that does not show as itself: controls, format
/// and other default-ignorable characters (zero-width, direction overrides, fillers,
/// variation selectors, tags), line and paragraph separators, spaces other than U+0020,
/// private-use characters and non-characters. A listing would show `ro\u{200b}` as
/// `ro` beside the real one, or reorder what follows a direction override.
pub fn hides_characters(text: &str, breaks: bool) -> bool {
    text.chars().any(|c| match c {
        '\n' | '\r' | '\t' => !breaks,
        ' ' => false,
        c => c.is_control() || c.is_whitespace() || is_hidden(c),
    })
}

/// Default_Ignorable_Code_Point (Unicode 15.1), the other format characters, the
/// braille blank, private use and non-characters.
fn is_hidden(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}'..='\u{1160}' | '\u{17b4}'..='\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{206f}'
        | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}' | '\u{fff0}'..='\u{fffb}'
        | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}' | '\u{e0000}'..='\u{e0fff}'
        | '\u{600}'..='\u{605}' | '\u{6dd}' | '\u{70f}' | '\u{890}'..='\u{891}' | '\u{8e2}'
        | '\u{110bd}' | '\u{110cd}' | '\u{13430}'..='\u{1343f}'
        | '\u{2800}'
        | '\u{e000}'..='\u{f8ff}' | '\u{f0000}'..='\u{10ffff}'
        | '\u{fdd0}'..='\u{fdef}'
    ) || u32::from(c) & 0xfffe == 0xfffe
}

/// A new uid or api key: `blt` + 16 hex.
pub fn new_uid() -> std::io::Result<String> {
    Ok(format!("blt{}", random_hex::<8>()?))
}

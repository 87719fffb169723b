//! The query's say in what a management-token request addresses.
//!
//! The gateway authorises the stack and branch of the `api_key` and `branch` headers,
//! and the query is forwarded as it came. A backend that also reads `api_key` or
//! `branch` from the query (many do, the CMA among them) would act on whatever the
//! query says: so a query value must be the authorised one, given once, or absent.
//! A credential in the query (`authtoken`, ...) would let the backend authorise the
//! request as someone the gateway did not check: it is refused outright.
//!
//! Keys are read the way the most lenient backends read them, and a key any of them
//! could take for one of these names counts as that name: pairs split on `&` and `;`,
//! percent- and `+`-decoded; a key cut at a NUL (PHP); its array base (`branch[]`,
//! PHP and Rack) or its first bracketed name (`[branch]`, qs); each compared with
//! everything but letters and digits dropped and case ignored, also through Unicode case
//! mappings that give ASCII (`API-Key`, `api.key`, `]api_key`, `auth_token`, `apı_key`).
//!
//! The other places such a backend reads parameters from are closed too: cookies may
//! not name these keys, and a body may not be a urlencoded form.

use super::auth::{self, Credentials};
use super::policy::{ascii_path_parts, path_heads, path_parts, DEFAULT_BRANCH};
use crate::error::{BadRequest, Denial, GatewayError};
use crate::field_names::folded_eq;
use http::header::{CONTENT_TYPE, COOKIE};
use http::request::Parts;
use http::{HeaderMap, HeaderName};
use std::borrow::Cow;
use std::iter::FlatMap;

const AMBIGUOUS: GatewayError = GatewayError::BadRequest(BadRequest::AmbiguousQuery);

/// What a query parameter means to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Param {
    StackKey,
    Branch,
    /// `base_branch`, `compare_branch`: see [`named_branches`].
    BaseBranch,
    CompareBranch,
    /// A credential or a method override: never in a management-token request's query.
    Refused,
    /// What a body rule reads (`workflow`, `workflow_stage`, `publishing_rule`, `status`,
    /// `approvers`): see [`check_rule_keys`].
    RuleKey,
    Other,
}

/// Refuses a query whose `api_key` or `branch` differs from the authorised request's
/// (or is repeated), or that carries a credential.
pub fn check(query: Option<&str>, creds: &Credentials<'_>) -> Result<(), GatewayError> {
    let Some(query) = query.filter(|q| !q.is_empty()) else { return Ok(()) };
    let api_key = creds.api_key().map(|v| v.as_bytes());
    let branch = creds.branch.map_or(DEFAULT_BRANCH.as_bytes(), |v| v.as_bytes());
    check_pairs(query, api_key, branch)?;
    each_decoding(query, AMBIGUOUS, |decoded| check_pairs(decoded, api_key, branch))
}

/// What may stand between two cookies to some parser: `;`, `,` in RFC 2965's and some
/// servers' joined headers, and spaces and tabs, which Python's `http.cookies` (aiohttp,
/// Bottle, CherryPy) takes between cookies too.
const COOKIE_SEPARATORS: [char; 4] = [';', ',', ' ', '\t'];

/// On a path whose body a rule reads (entry workflow, publish rules), refuses a query
/// key or a cookie that names what the rule reads (`workflow`, `workflow_stage`,
/// `publishing_rule`, `status`, `approvers`; read as [`check`] reads keys, and by its
/// first part as a path, as the body rule reads keys: `workflow[workflow_stage][uid]`,
/// `workflow.status`, `workflow__workflow_stage`). Rails
/// merges query parameters over the body's (`params`), Laravel's `input` falls back to
/// the query, and PHP's `$_REQUEST` may take cookies: the backend would act on what the
/// rule never read. 403, as a body the rule refuses.
pub fn check_rule_keys(query: Option<&str>, headers: &HeaderMap) -> Result<(), GatewayError> {
    let refused = GatewayError::Forbidden(Denial::BodyRule);
    let names = |key: &str| {
        classify(key) == Param::RuleKey
            || path_heads(key).into_iter().flatten().any(|head| classify(head) == Param::RuleKey)
    };
    let none_named = |text: &str| if pairs(text).any(|(key, _)| names(&key)) { Err(refused.clone()) } else { Ok(()) };
    if let Some(query) = query {
        none_named(query)?;
        each_decoding(query, refused.clone(), none_named)?;
    }
    each_cookie(headers, none_named)
}

/// The values of the query's pairs whose names `named` takes, and of the cookies whose
/// names it takes (or of every cookie), split and decoded as [`pairs`] and
/// [`each_cookie`] read them (for the access line, which shows none of a request's
/// credentials).
pub fn values_named(
    query: Option<&str>,
    headers: &HeaderMap,
    named: impl Fn(&str) -> bool,
    every_cookie: bool,
) -> Vec<bytes::Bytes> {
    let mut found = Vec::new();
    for (key, value) in query.map(pairs).into_iter().flatten() {
        if named(&key) {
            found.push(bytes::Bytes::copy_from_slice(value.as_bytes()));
        }
    }
    let _ = each_cookie(headers, |cookie| {
        let (name, value) = cookie.split_once('=').unwrap_or((cookie, ""));
        if every_cookie || named(name.trim()) {
            found.push(bytes::Bytes::copy_from_slice(value.trim().as_bytes()));
        }
        Ok(())
    });
    found
}

/// Calls `f` on each cookie (`name=value`, trimmed) of every `Cookie` field, split at
/// [`COOKIE_SEPARATORS`], until it fails.
fn each_cookie(headers: &HeaderMap, mut f: impl FnMut(&str) -> Result<(), GatewayError>) -> Result<(), GatewayError> {
    for value in headers.get_all(COOKIE) {
        let text = String::from_utf8_lossy(value.as_bytes());
        for cookie in text.split(COOKIE_SEPARATORS) {
            f(cookie.trim())?;
        }
    }
    Ok(())
}

/// [`check`] for one reading of the query.
fn check_pairs(query: &str, api_key: Option<&[u8]>, branch: &[u8]) -> Result<(), GatewayError> {
    let (mut seen_key, mut seen_branch) = (false, false);
    for (key, value) in pairs(query) {
        let (seen, authorised) = match classify(&key) {
            Param::Other | Param::BaseBranch | Param::CompareBranch | Param::RuleKey => continue,
            Param::Refused => return Err(AMBIGUOUS),
            Param::StackKey => (&mut seen_key, api_key),
            Param::Branch => (&mut seen_branch, Some(branch)),
        };
        if std::mem::replace(seen, true) || authorised != Some(value.as_bytes()) {
            return Err(AMBIGUOUS);
        }
    }
    Ok(())
}

/// The branches a compare or merge acts on: its query's `base_branch` and
/// `compare_branch` (read as [`check`] reads `branch`: any spelling a lenient backend
/// takes for them), each at most once; an absent one is the default branch, which a
/// backend would take in its place.
pub fn named_branches(query: Option<&str>) -> Result<[Cow<'_, str>; 2], GatewayError> {
    let query = query.unwrap_or_default();
    let named = named_in(query)?;
    each_decoding(query, AMBIGUOUS, |decoded| if named_in(decoded)? == named { Ok(()) } else { Err(AMBIGUOUS) })?;
    Ok(named)
}

/// Refuses cookies that name `api_key`, `branch`, a compare's branches, a credential or
/// a method override (read as query keys are): ASP.NET's `Request[name]` and PHP's
/// `$_REQUEST` (with cookies in `request_order`) take a cookie where the query lacks
/// the name, so such a cookie would address what the gateway did not authorise. CMA
/// clients send none of them.
pub fn check_cookies(headers: &HeaderMap) -> Result<(), GatewayError> {
    each_cookie(headers, |cookie| {
        if pairs(cookie).any(|(name, _)| !matches!(classify(&name), Param::Other | Param::RuleKey)) {
            Err(GatewayError::BadRequest(BadRequest::AmbiguousCookie))
        } else {
            Ok(())
        }
    })
}

/// Refuses a body that a backend would read as a form, or whose type parsers read
/// differently: a backend that merges form fields into its parameters (PHP's
/// `$_REQUEST`, Go's `FormValue`, Laravel's `input`, Rack's `params`) would read a
/// `branch` or `api_key` in it that the gateway never saw. The CMA takes JSON (and
/// multipart for uploads), never a urlencoded form. Parsers disagree on what a type
/// is: PHP and Rack cut it at `,`, Python strips `\xa0` around it, Symfony and ASP.NET
/// take a form type by prefix, and Puma reads `Content_Type` when `Content-Type` is
/// missing. So with a body, the type must be stated at most once, in visible ASCII,
/// spaces and tabs, without `,`, and must not begin with
/// `application/x-www-form-urlencoded`. A body without a type is refused by the
/// handler once its first frame shows a byte (Rack reads a POST body without one as a
/// form; an empty one carries no fields). A request whose body cannot hold a byte (no
/// length or chunks over HTTP/1, a stated length of 0, an HTTP/2 stream closed with its
/// headers) carries no fields. Multipart bodies pass unread: uploads need them
/// (SECURITY.md says what that leaves open).
pub fn check_body_type(parts: &Parts, has_body: bool) -> Result<(), GatewayError> {
    let headers = &parts.headers;
    let respelled = |name: &HeaderName| name != CONTENT_TYPE && folded_eq(name.as_str().as_bytes(), b"content-type");
    if headers.keys().any(respelled) {
        return Err(GatewayError::UnsupportedBodyType);
    }
    if !has_body {
        return Ok(());
    }
    let mut types = headers.get_all(CONTENT_TYPE).iter();
    let readable = match (types.next(), types.next()) {
        (Some(only), None) => is_plain_non_form(only.as_bytes()),
        // Refused once it shows a byte (see above).
        (None, _) => true,
        (Some(_), Some(_)) => false,
    };
    if readable {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedBodyType)
    }
}

/// A type every parser reads alike, and not as a urlencoded form (see [`check_body_type`]).
fn is_plain_non_form(value: &[u8]) -> bool {
    const FORM: &[u8] = b"application/x-www-form-urlencoded";
    let plain = value.iter().all(|&b| b == b' ' || b == b'\t' || (b.is_ascii_graphic() && b != b','));
    let media = value.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
    let form = media.get(..FORM.len()).is_some_and(|head| head.eq_ignore_ascii_case(FORM));
    plain && !media.is_empty() && !form
}

/// [`named_branches`] for one reading of the query.
fn named_in(query: &str) -> Result<[Cow<'_, str>; 2], GatewayError> {
    let mut named: [Option<Cow<'_, str>>; 2] = [None, None];
    for (key, value) in pairs(query) {
        let slot = match classify(&key) {
            Param::BaseBranch => &mut named[0],
            Param::CompareBranch => &mut named[1],
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(AMBIGUOUS);
        }
    }
    Ok(named.map(|name| name.unwrap_or(Cow::Borrowed(DEFAULT_BRANCH))))
}

/// A query's pairs as the lenient parsers split them: on `&` and `;`, then decoded.
fn pairs(query: &str) -> Pairs<'_> {
    if query.bytes().all(is_plain) {
        Pairs::Plain(query.split('&'))
    } else {
        let parse: Decode<'_> = |piece| form_urlencoded::parse(piece.as_bytes());
        Pairs::Decoded(query.split(['&', ';']).flat_map(parse))
    }
}

/// A byte that reads as itself to every decoder and splits nothing but at `&` and `=`:
/// a query made of these alone (`locale=en-us&include_count=true`, nearly every CMA
/// query) has its own slices as its pairs.
fn is_plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'=' | b'&')
}

/// The pairs of [`pairs`]: a plain query's are its own slices, split as the decoder
/// splits them (empty pieces skipped, a key without `=` has an empty value), without
/// the decoder's pass over every byte.
enum Pairs<'a> {
    Plain(std::str::Split<'a, char>),
    Decoded(FlatMap<std::str::Split<'a, [char; 2]>, form_urlencoded::Parse<'a>, Decode<'a>>),
}

/// How [`pairs`] decodes each `&`- or `;`-separated piece.
type Decode<'a> = fn(&'a str) -> form_urlencoded::Parse<'a>;

impl<'a> Iterator for Pairs<'a> {
    type Item = (Cow<'a, str>, Cow<'a, str>);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Pairs::Plain(pieces) => {
                let piece = pieces.find(|piece| !piece.is_empty())?;
                let (key, value) = piece.split_once('=').unwrap_or((piece, ""));
                Some((Cow::Borrowed(key), Cow::Borrowed(value)))
            }
            Pairs::Decoded(pairs) => pairs.next(),
        }
    }
}

/// Whether a user-session request carries anything shaped like an issued secret in
/// any field or in its query, as sent or through any of their decodings (a cookie
/// `authtoken=cs%33...`): the backend, which decides user sessions and may read one
/// from a cookie, the query or a field of another name, would be handed a management
/// token undecided.
pub fn carries_token_shape(headers: &HeaderMap, path: &str, query: Option<&str>) -> bool {
    carries_token_shape_but(headers, None, path, query)
}

/// [`carries_token_shape`], the value of the field `except` aside (a management
/// token's own `authorization`): a management-token request holding another secret
/// (its own elsewhere, another token's in a field, a cookie, the path or the query)
/// would hand the backend a secret it must never see with `forward_token = false`,
/// and one it might act on whatever that setting.
pub fn carries_token_shape_but(
    headers: &HeaderMap,
    except: Option<&HeaderName>,
    path: &str,
    query: Option<&str>,
) -> bool {
    // A field's name counts too; a value with bytes beyond ASCII is read as a cookie
    // parser reads it (lossily).
    let value_holds = |v: &[u8]| {
        v.len() >= auth::SECRET_LEN
            && match std::str::from_utf8(v) {
                Ok(text) => holds_token_shape(text),
                Err(_) => holds_token_shape(&String::from_utf8_lossy(v)),
            }
    };
    headers.iter().any(|(name, v)| {
        auth::holds_token_shape(name.as_str().as_bytes()) || (Some(name) != except && value_holds(v.as_bytes()))
    }) || holds_token_shape(path)
        || query.is_some_and(holds_token_shape)
}

/// Whether `text` shows an issued secret's characters anywhere (delimited or not), as it
/// is, through any of its decodings, or with its escapes left out (`cs12%00...`, whose
/// escape is refused but whose characters a reader of the log puts back together): a
/// log line shows no such text.
pub fn shows_secret(text: &str) -> bool {
    in_any_reading(text, auth::shows_secret)
        || (text.len() > auth::SECRET_LEN && text.contains('%') && auth::shows_secret(&without_escapes(text)))
}

/// Whether `found` holds for `text` as it is, through any of its decodings, or with its
/// escapes left out ([`shows_secret`]'s readings, for a test of the caller's: a request's
/// own credential in its path).
pub fn shown_in_any_reading(text: &str, found: impl Fn(&[u8]) -> bool) -> bool {
    // Each reading also with its escapes left out: `%2500` splits a run only after a
    // decoding (the diff review's finding).
    let in_reading = |t: &str| found(t.as_bytes()) || (t.contains('%') && found(&without_escapes(t)));
    in_reading(text) || each_decoding(text, false, |d| if in_reading(d) { Err(true) } else { Ok(()) }) == Err(true)
}

/// `text` without its `%XX` escapes.
fn without_escapes(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut kept = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let escape = b == b'%' && bytes.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit));
        match escape {
            true => i += 3,
            false => {
                kept.push(b);
                i += 1;
            }
        }
    }
    kept
}

/// Whether `text` holds something shaped like an issued secret as it is or through any
/// of its decodings. Escapes still left after every decoding count as holding one, as
/// they make a key ambiguous on the management-token path.
pub fn holds_token_shape(text: &str) -> bool {
    // Decoding only shortens a text (and reading bytes lossily adds no letter or digit):
    // a shorter one holds no secret in any reading. Most fields are.
    text.len() >= auth::SECRET_LEN && in_any_reading(text, auth::holds_token_shape)
}

/// Whether `found` holds for `text` as it is or for any of its decodings; escapes still
/// left after every decoding count as found.
fn in_any_reading(text: &str, found: fn(&[u8]) -> bool) -> bool {
    found(text.as_bytes())
        || each_decoding(text, true, |d| if found(d.as_bytes()) { Err(true) } else { Ok(()) }).is_err()
}

/// Runs `f` on each further decoding of `text` (a whole query, or a key, after the
/// decoding its pairs get), stopping at the first error: a backend that decodes the
/// query before splitting it (`decodeURIComponent(qs)`, a proxy in front of it) reads
/// `a=1%26branch%3Dmain` as two pairs, and one that decodes a key again reads
/// `ap%2569_key` as `api_key`. `Err(too_deep)` when escapes remain after
/// [`MAX_DECODINGS`] of them.
fn each_decoding<E>(text: &str, too_deep: E, mut f: impl FnMut(&str) -> Result<(), E>) -> Result<(), E> {
    if !text.contains('%') {
        return Ok(());
    }
    let mut current = Cow::Borrowed(text);
    for _ in 0..MAX_DECODINGS {
        let Some(next) = decode_again(&current) else { return Ok(()) };
        f(&next)?;
        current = Cow::Owned(next);
    }
    match decode_again(&current) {
        Some(_) => Err(too_deep),
        None => Ok(()),
    }
}

/// How many more decodings a key gets read through (`%252569` is three).
const MAX_DECODINGS: usize = 4;

/// What a key may mean to some backend; the strongest reading wins. A key that still
/// holds an escape once decoded (`ap%2569_key`, IIS's `ap%u0069_key`) means something
/// else to a backend that decodes again: each further decoding is a reading too, and a
/// key still holding escapes after [`MAX_DECODINGS`] of them is refused.
fn classify(key: &str) -> Param {
    let mut best = classify_decoded(key);
    // Its compatibility form is another reading: one naming something else makes it two
    // (`compare＿branch．x` is `branch` split at `＿`, `compare_branch` composed).
    if !key.is_ascii() {
        if let Some(form) = compatibility_form(key) {
            best = either(best, classify(&form));
        }
    }
    let deeper = each_decoding(key, (), |next| {
        let reading = classify_decoded(next);
        if reading.strength() > best.strength() {
            best = reading;
        }
        Ok(())
    });
    match deeper {
        Ok(()) => best,
        Err(()) => Param::Refused,
    }
}

/// A key as NFKC_Casefold reads it, apart from the case folding every reading does
/// itself: compatibility forms composed (full-width `．`, `＿` and `［` as `.`, `_` and
/// `[`), and characters Unicode calls default-ignorable (a soft hyphen, a zero-width
/// space, a word joiner) dropped, as Python's `casefold` after NFKC, ICU and IDNA's
/// mapping do. `None` for an ASCII key or one this leaves as it is. A second text to
/// read, beside the key as sent: `wo\u{ad}rkflow_stage．uid` is `workflow_stage.uid`.
#[inline(never)]
pub(super) fn compatibility_form(key: &str) -> Option<String> {
    use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};
    // Most keys are their own form (ASCII, or letters NFKC keeps, such as `é`): found
    // without building it.
    if key.is_ascii() || (is_nfkc_quick(key.chars()) == IsNormalized::Yes && !key.chars().any(default_ignorable)) {
        return None;
    }
    let form: String = key.nfkc().filter(|&c| !default_ignorable(c)).collect();
    (form != key).then_some(form)
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt): characters shown
/// as nothing, which NFKC_Casefold removes.
fn default_ignorable(c: char) -> bool {
    matches!(c,
        '\u{ad}' | '\u{34f}' | '\u{61c}' | '\u{115f}'..='\u{1160}' | '\u{17b4}'..='\u{17b5}'
        | '\u{180b}'..='\u{180f}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}' | '\u{3164}' | '\u{fe00}'..='\u{fe0f}' | '\u{feff}' | '\u{ffa0}'
        | '\u{fff0}'..='\u{fff8}' | '\u{1bca0}'..='\u{1bca3}' | '\u{1d173}'..='\u{1d17a}'
        | '\u{e0000}'..='\u{e0fff}')
}

/// One more decoding of `key`, if it holds an escape: `%XX` (a byte) and `%uXXXX` (a
/// UTF-16 unit, as IIS and JavaScript's `unescape` read it; a lone surrogate becomes
/// U+FFFD). `None` when nothing decodes, so the key reads the same to every backend.
fn decode_again(key: &str) -> Option<String> {
    let hex = |s: &[u8]| s.iter().try_fold(0u32, |n, &b| Some(n * 16 + char::from(b).to_digit(16)?));
    let bytes = key.as_bytes();
    let (mut out, mut i, mut changed) = (Vec::with_capacity(bytes.len()), 0, false);
    while let Some(&b) = bytes.get(i) {
        let unit = bytes.get(i + 1).filter(|&&u| b == b'%' && (u == b'u' || u == b'U'));
        if let Some(n) = unit.and_then(|_| bytes.get(i + 2..i + 6)).and_then(hex) {
            let c = char::from_u32(n).unwrap_or(char::REPLACEMENT_CHARACTER);
            out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
            (i, changed) = (i + 6, true);
        } else if let Some(n) = bytes.get(i + 1..i + 3).filter(|_| b == b'%').and_then(hex) {
            out.push(n as u8);
            (i, changed) = (i + 3, true);
        } else {
            out.push(b);
            i += 1;
        }
    }
    changed.then(|| String::from_utf8_lossy(&out).into_owned())
}

/// [`classify`] for one decoding of a key: the key itself, cut at a NUL (PHP), its array
/// base (`branch[]`, PHP and Rack), its first bracketed name (`[branch]`, qs) and each
/// part of it as a path: the first (`branch.x`, qs with `allowDots`; `branch．x` to a
/// parser that normalises to NFKC) and the others (ASP.NET's model binding reads
/// `query.branch` as the `Branch` of a parameter named `query`). See [`either`] for
/// how their readings combine.
fn classify_decoded(key: &str) -> Param {
    // The usual key (`locale`, `include_count`) is one word, with no `__` in it: its
    // readings are the key itself. (One pass over its bytes; `str::contains` costs more.)
    let mut last = 0;
    let one_word = key.bytes().all(|b| {
        let word = b.is_ascii_alphanumeric() || b == b'-' || (b == b'_' && last != b'_');
        last = b;
        word
    });
    if one_word {
        return param(key);
    }
    // Up to a NUL (PHP), and whole, where a NUL separates parts like any other control
    // character (`%00base_branch`), and by the parts a split at ASCII alone gives
    // (`ba\u{ad}se_branch.x`, see `policy::path_heads`).
    let whole = key;
    let key = key.split('\0').next().unwrap_or_default();
    let base = key.split('[').next().unwrap_or_default();
    let bracketed =
        key.trim_start_matches(|c: char| c.is_whitespace() || c == '[').split(']').next().unwrap_or_default();
    let whole_parts = (whole.len() != key.len()).then(|| path_parts(whole)).into_iter().flatten();
    let ascii_parts = (!key.is_ascii()).then(|| ascii_path_parts(key)).into_iter().flatten();
    [key, base, bracketed]
        .into_iter()
        .chain(path_parts(key))
        .chain(whole_parts)
        .chain(ascii_parts)
        .map(param)
        .fold(Param::Other, either)
}

/// What a key with two readings means: the stronger, and when both name something
/// different (`api_key[branch]`, `ｂranch` as `branch` or `compare_branch`), refused.
fn either(a: Param, b: Param) -> Param {
    match (a, b) {
        (Param::Other, p) | (p, Param::Other) => p,
        (a, b) if a == b => a,
        _ => Param::Refused,
    }
}

/// The longest name [`param`] looks for (`xhttpmethodoverride`); a key with more
/// letters and digits than this is none of them.
const LONGEST: usize = 19;

/// The names [`param`] looks for, by their letters and digits in lower case.
const NAMES: [(&[u8], Param); 26] = [
    (b"apikey", Param::StackKey),
    (b"branch", Param::Branch),
    (b"basebranch", Param::BaseBranch),
    (b"comparebranch", Param::CompareBranch),
    // Credentials, and method overrides (what was authorised is the method sent).
    (b"authtoken", Param::Refused),
    (b"authorization", Param::Refused),
    (b"accesstoken", Param::Refused),
    (b"sessiontoken", Param::Refused),
    (b"authorisation", Param::Refused),
    (b"xauthtoken", Param::Refused),
    (b"xaccesstoken", Param::Refused),
    (b"xsessiontoken", Param::Refused),
    (b"xauthorization", Param::Refused),
    (b"xauthorisation", Param::Refused),
    (b"method", Param::Refused),
    (b"httpmethod", Param::Refused),
    (b"methodoverride", Param::Refused),
    (b"httpmethodoverride", Param::Refused),
    (b"xhttpmethodoverride", Param::Refused),
    (b"xmethodoverride", Param::Refused),
    (b"xhttpmethod", Param::Refused),
    (b"workflow", Param::RuleKey),
    (b"workflowstage", Param::RuleKey),
    (b"publishingrule", Param::RuleKey),
    (b"status", Param::RuleKey),
    (b"approvers", Param::RuleKey),
];

/// What a name means with everything but letters and digits dropped and case ignored.
/// A name with other than ASCII in it means whatever it may read as (see
/// [`may_read_as`]: `apı_key`, full-width `ａpi_key`, `äpi_key`, Cyrillic `аpi_key`,
/// Hebrew `api_קey`); one that may read as two different names (`ｂranch` as `branch`
/// or `compare_branch`) is refused.
fn param(name: &str) -> Param {
    if !name.is_ascii() {
        let readings = NAMES.iter().filter(|(known, _)| may_read_as(name, known)).map(|&(_, p)| p);
        return readings.fold(Param::Other, either);
    }
    // Folded into a stack buffer once, then looked up: no allocation per key.
    let mut folded = [0u8; LONGEST];
    let mut len = 0;
    for b in name.bytes().filter(u8::is_ascii_alphanumeric) {
        let Some(slot) = folded.get_mut(len) else { return Param::Other };
        *slot = b.to_ascii_lowercase();
        len += 1;
    }
    let folded = folded.get(..len).unwrap_or_default();
    NAMES.iter().find(|(known, _)| *known == folded).map_or(Param::Other, |&(_, p)| p)
}

/// Whether `key` may read as `word` to some reader: its ASCII letters and digits in
/// order with case ignored, its other ASCII characters dropped (as snake- and
/// camel-casing helpers and the query rule drop separators), and each run of other
/// characters read as any letters at all, or none. No table of readings is complete:
/// case mappings (`ı` as `i`, `ß` as `ss`, `ﬂ` as `fl`), compatibility forms (full-width
/// letters), accent strippers (`ä` and `ø` as `a` and `o`) and transliterators
/// (unidecode and anyascii: Cyrillic `а` as `a`, Hebrew `ק` as `k`, `ə` as `e`) each
/// read such characters their own way, so a key that needs one of them to spell `word`
/// is taken to spell it.
pub(super) fn may_read_as(key: &str, word: &[u8]) -> bool {
    let mut letters = [0u8; 32];
    let mut n = 0;
    for b in word.iter().filter(|b| b.is_ascii_alphanumeric()) {
        let Some(slot) = letters.get_mut(n) else { return false };
        *slot = b.to_ascii_lowercase();
        n += 1;
    }
    let word = letters.get(..n).unwrap_or_default();
    if key.is_ascii() {
        return key.bytes().filter(u8::is_ascii_alphanumeric).map(|b| b.to_ascii_lowercase()).eq(word.iter().copied());
    }
    // `None` is a run of non-ASCII characters: a wildcard. Each letter or digit of the
    // key stands for one of `word`'s, so a key with more of them than `word` has cannot
    // read as it: that ends the look at once (a body of long keys costs a pass over
    // each key, no more), and bounds the pattern (a wildcard between each two letters)
    // to a buffer on the stack.
    let mut pattern = [None; 2 * 32 + 1];
    let (mut len, mut literals) = (0, 0);
    for c in key.chars() {
        let next = match u8::try_from(c) {
            Ok(b) if b.is_ascii() => {
                if !b.is_ascii_alphanumeric() {
                    continue;
                }
                literals += 1;
                if literals > n {
                    return false;
                }
                Some(b.to_ascii_lowercase())
            }
            _ if len > 0 && pattern.get(len - 1) == Some(&None) => continue,
            _ => None,
        };
        let Some(slot) = pattern.get_mut(len) else { return false };
        *slot = next;
        len += 1;
    }
    wildcard_match(pattern.get(..len).unwrap_or_default(), word)
}

/// Glob matching with one kind of wildcard (`None`, any run): greedy, going back to the
/// last wildcard on a mismatch, which suffices for a single kind (linear in practice,
/// `pattern.len() * word.len()` at worst).
fn wildcard_match(pattern: &[Option<u8>], word: &[u8]) -> bool {
    let (mut p, mut w) = (0, 0);
    let mut resume: Option<(usize, usize)> = None;
    while let Some(&want) = word.get(w) {
        match pattern.get(p) {
            Some(Some(b)) if *b == want => (p, w) = (p + 1, w + 1),
            Some(None) => {
                resume = Some((p + 1, w));
                p += 1;
            }
            _ => match resume {
                Some((after, from)) => {
                    resume = Some((after, from + 1));
                    (p, w) = (after, from + 1);
                }
                None => return false,
            },
        }
    }
    pattern.get(p..).unwrap_or_default().iter().all(Option::is_none)
}

/// Whether `found` holds for a key (of a JSON body) as written or through any further
/// percent-decoding, for a backend that URL-decodes keys (`st%61tus`, parameter parsers
/// that merge a JSON body into the query's map). Escapes still left after every
/// decoding count as found.
pub(super) fn in_any_form(key: &str, mut found: impl FnMut(&str) -> bool) -> bool {
    found(key) || each_decoding(key, true, |d| if found(d) { Err(true) } else { Ok(()) }).is_err()
}

/// Calls `f` on each pair of the query whose key reads as a credential or a method
/// override (as [`check`] reads keys; `?authtoken=`, `?access_token=`) or is named
/// like a user credential field or a session (`?token=`, `?x_api_key=`, `?session=`,
/// `?user_id=`: `field_names::may_tell_sessions_apart`), in the query as it is and
/// decoded before it is split (`?a=1%26authtoken%3Dx`): what a user session's upstream
/// connection is chosen by, beside its fields.
pub fn each_credential(query: Option<&str>, mut f: impl FnMut(&str, &str)) {
    let mut in_reading = |text: &str| {
        for (key, value) in pairs(text) {
            if classify(&key) == Param::Refused || crate::field_names::may_tell_sessions_apart(key.as_bytes()) {
                f(&key, &value);
            }
        }
        Ok::<(), ()>(())
    };
    let query = query.unwrap_or_default();
    let _ = in_reading(query);
    let _ = each_decoding(query, (), in_reading);
}

/// Whether a key (of the query, a JSON body or a header) reads as `base_branch` or
/// `compare_branch`: a compare or merge may name its branches in the query only.
pub fn names_branch_pair(key: &str) -> bool {
    matches!(classify(key), Param::BaseBranch | Param::CompareBranch)
}

/// [`names_branch_pair`], or a key that reads as two names (`base_branch.compare_branch`)
/// or as a credential: what a compare's or merge's body may not hold.
pub fn may_name_branch_pair(key: &str) -> bool {
    matches!(classify(key), Param::BaseBranch | Param::CompareBranch | Param::Refused)
}

impl Param {
    fn strength(&self) -> u8 {
        match self {
            Param::Other => 0,
            Param::RuleKey => 1,
            Param::StackKey | Param::Branch | Param::BaseBranch | Param::CompareBranch => 1,
            Param::Refused => 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SECRET: &str = "cs0123456789abcdef0123456789abcdef";

    /// A rule's keys in the query or a cookie, in every spelling query keys are read
    /// in and by the part before `[` or `.`, are refused on a rule's path (the
    /// thirteenth outside probe: Rails merges the query over the body).
    #[test]
    fn rule_keys_in_the_query_or_a_cookie_are_refused() {
        let none = HeaderMap::new();
        for query in [
            "workflow[workflow_stage][uid]=blt6",
            "workflow%5Bworkflow_stage%5D%5Buid%5D=blt6",
            "workflow%255Bworkflow_stage%255D=blt6",
            "workflow.workflow_stage.uid=blt6",
            "workflow[publishing_rule][status]=1",
            "workflow_stage=blt6",
            "status=1",
            "locale=en-us&Status=1",
            "publishing_rule[approvers][users][]=blt5",
            "Publishing-Rule[approvers][users][]=blt5",
            "publishingRule.approvers=blt5",
            "approvers[users][]=blt5",
            "\u{ff57}orkflow[workflow_stage]=blt6",
            "%C5%BFtatus=1",
            "x=1;workflow[workflow_stage]=blt6",
            "workflow__workflow_stage__uid=blt6",
            "publishing_rule__approvers__users=blt5",
            "workflow%2Eworkflow_stage=blt6",
            "workflow|workflow_stage=blt6",
            "workflow\u{ff0e}workflow_stage=blt6",
            // Rack 2 drops leading brackets (the sixteenth outside probe).
            "[][workflow][workflow_stage]=1",
            "[]workflow[workflow_stage]=1",
            "][workflow][workflow_stage]=1",
            "][publishing_rule][status]=1",
            "[][publishing_rule][approvers][users][]=u1",
            "[]approvers[users][]=u1",
            "%5B%5D%5Bworkflow%5D%5Bworkflow_stage%5D=1",
            // Accents that lodash's `snakeCase` strips (the nineteenth outside probe).
            "w%C3%B6rkflow_stage=s",
            "st%C3%A4tus=1",
            "appr%C3%B8vers[users][]=u1",
            // Letters that transliterators read as the rule's: Cyrillic `а`, `о`, Greek
            // `τ` (the twentieth outside probe).
            "st%D0%B0tus=1",
            "appr%D0%BEvers[users][]=u1",
            "sta%CF%84us=1",
            // Letters no table holds (Hebrew `ק`, which unidecode and anyascii read as `k`:
            // the twenty-first outside probe).
            "wor%D7%A7flow_stage=x",
            "workflow.wor%D7%A7flow_stage=x",
            // A leading NUL, an invisible character in a path's first part (the probe of
            // the 7th of December).
            "%00workflow_stage=s",
            "wo%C2%ADrkflow_stage.uid=s",
            "sta%E2%81%A0tus.x=1",
        ] {
            assert!(check_rule_keys(Some(query), &none).is_err(), "{query}");
        }
        for query in
            ["locale=en-us", "include_workflow=true", "workflows=1", "stat=1", "status_text=1", "comment.text=1", ""]
        {
            assert!(check_rule_keys(Some(query), &none).is_ok(), "{query}");
        }
        assert!(check_rule_keys(None, &none).is_ok());
        let mut cookies = HeaderMap::new();
        cookies.insert(COOKIE, HeaderValue::from_static("session=1; workflow[workflow_stage][uid]=blt6"));
        assert!(check_rule_keys(None, &cookies).is_err());
        cookies.insert(COOKIE, HeaderValue::from_static("a=1 status=1"));
        assert!(check_rule_keys(None, &cookies).is_err(), "a space between cookies");
        cookies.insert(COOKIE, HeaderValue::from_static("a=b\tworkflow=1"));
        assert!(check_rule_keys(None, &cookies).is_err(), "a tab between cookies");
        cookies.insert(COOKIE, HeaderValue::from_static("session=1; theme=dark"));
        assert!(check_rule_keys(None, &cookies).is_ok());
        // Elsewhere they are ordinary keys: the query rule passes them.
        assert!(check_cookies(&{
            let mut h = HeaderMap::new();
            h.insert(COOKIE, HeaderValue::from_static("status=1"));
            h
        })
        .is_ok());
    }

    #[test]
    fn a_secrets_shape_is_found_in_any_field_or_the_query_however_encoded() {
        let encoded: String = SECRET.bytes().map(|b| format!("%{b:02X}")).collect();
        let twice = encoded.replace('%', "%25");
        let deep = (0..5).fold(SECRET.replacen('c', "%63", 1), |t, _| t.replace('%', "%25"));
        let field = |value: &[u8]| {
            let mut headers = HeaderMap::new();
            headers.insert("x-any", HeaderValue::from_bytes(value).unwrap());
            carries_token_shape(&headers, "/", None)
        };
        for value in [
            SECRET.to_owned(),
            format!("authtoken={encoded}"),
            format!("a=1; authtoken={twice}"),
            format!("a=\u{e9}; authtoken={encoded}"),
            deep,
        ] {
            assert!(field(value.as_bytes()), "{value}");
            assert!(carries_token_shape(&HeaderMap::new(), "/", Some(&value)), "?{value}");
        }
        let mut named = HeaderMap::new();
        named.insert(HeaderName::from_bytes(format!("x-{SECRET}").as_bytes()).unwrap(), HeaderValue::from_static("1"));
        assert!(carries_token_shape(&named, "/", None), "a field named after a secret");
        for path in [
            format!("/v3/content_types/{SECRET}"),
            format!("/v3/x;{encoded}"),
            format!("/v3/x/{}", SECRET.replacen('c', "%2563", 1)),
        ] {
            assert!(carries_token_shape(&HeaderMap::new(), &path, None), "{path}");
        }
        assert!(!carries_token_shape(&HeaderMap::new(), "/v3/content_types/blt0123456789abcdef", None));
        for value in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "d3351877-000000000001",
            "\"5f8a0f0e0d0c0b0a09080706050403020100\"",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjczAxMjMifQ.c2lnbmF0dXJl",
            "csrftoken=Zx3Vq9pLmN2bC4dE6fG8hJ0kL1mN3pQ5; sessionid=abc",
            "blt0123456789abcdef",
            "cs5b69faf35efdebd91d08bcf4",
        ] {
            assert!(!field(value.as_bytes()), "{value}");
        }
    }

    /// What a log line withholds: a secret as sent, decoded, glued to other characters,
    /// or split by escapes (`%00`, `%2F`) that a reader of the log leaves out.
    #[test]
    fn a_log_shows_no_secret_in_any_reading() {
        for path in [
            format!("/v3/content_types/{SECRET}"),
            format!("/v3/x/blt{SECRET}x"),
            format!("/v3/x/{}", SECRET.replacen('s', "%73", 1)),
            format!("/v3/x/{}%00{}", &SECRET[..12], &SECRET[12..]),
            format!("/v3/x/{}%2F{}%2f{}", &SECRET[..10], &SECRET[10..20], &SECRET[20..]),
        ] {
            assert!(shows_secret(&path), "{path}");
        }
        for path in ["/v3/content_types/blog/entries/blt0123456789abcdef", "/v3/x/cs%2F0123456789abcdef0123456789"] {
            assert!(!shows_secret(path), "{path}");
        }
    }

    fn check_with(query: &str, api_key: &'static str, branch: Option<&'static str>) -> Result<(), GatewayError> {
        let mut headers = HeaderMap::new();
        headers.insert("api_key", HeaderValue::from_static(api_key));
        if let Some(b) = branch {
            headers.insert("branch", HeaderValue::from_static(b));
        }
        let creds = Credentials::read(&headers)?;
        check(Some(query), &creds)
    }

    #[test]
    fn matching_values_pass_and_others_are_refused() {
        assert!(check_with("include_count=true&limit=5", "blt1", None).is_ok());
        // Longer than every name looked for, or one of them with more around it.
        assert!(check_with("x_http_method_override_extra=1&api_keys=2&branches=3", "blt1", None).is_ok());
        assert!(check_with("api_key=blt1&branch=main", "blt1", None).is_ok());
        assert!(check_with("branch=development", "blt1", Some("development")).is_ok());
        for bad in [
            "branch=development",
            "api_key=blt2",
            "api_key=blt1&api_key=blt1",
            "branch=main&branch=main",
            "API_KEY=blt2",
            "api-key=blt2",
            "api.key=blt2",
            "api%5Fkey=blt2",
            "Branch%5B%5D=development",
            "branch[0]=development",
            "+branch=development",
            "authtoken=user",
            "access_token=x",
            "branch=",
            "[branch]=development",
            "%5Bbranch%5D=development",
            "[[api_key]]=blt2",
            "]api_key=blt2",
            "api_key%00=blt2",
            "branch%00x=development",
            "x=1;branch=development",
            "api_key=blt1&[api_key]=blt2",
            "auth_token=x",
            "auth-token=x",
            "_method=DELETE",
            "x-http-method-override=DELETE",
            "X_HTTP_Method_Override=DELETE",
            " authtoken=x",
            "authtoken[x]=y",
            // Unicode case mappings that give ASCII (Java's equalsIgnoreCase, JavaScript's
            // toUpperCase): dotless and dotted I, the Kelvin sign, the long s.
            "ap\u{131}_key=blt2",
            "ap\u{130}_key=blt2",
            "api_\u{212a}ey=blt2",
            "ap%C4%B1_key=blt2",
            "api_%E2%84%AAey=blt2",
            // One character to several: `ß` and `ẞ` upper-case to `SS`.
            "acce%C3%9F_token=x",
            "ACCE%E1%BA%9E_TOKEN=x",
            "author\u{131}zation=x",
            "authto\u{212a}en=x",
            "acce\u{17f}\u{17f}_to\u{212a}en=x",
            "x-http-method-overr\u{131}de=DELETE",
            // Compatibility forms (NFKC): full-width letters, decoded or not.
            "\u{ff41}pi_key=blt2",
            "%EF%BD%81pi_key=blt2",
            "\u{ff42}ranch=development",
            "\u{ff3f}method=DELETE",
            "x\u{ff0d}auth\u{ff0d}token=x",
            // Escapes left after decoding: a backend that decodes again (or reads IIS's
            // `%uXXXX`) reads the name.
            "ap%2569_key=blt2",
            "ap%u0069_key=blt2",
            "ap%U0069_key=blt2",
            "%25u0062ranch=development",
            "auth%252574oken=x",
            "%2561%2570%2569%255fkey=blt2",
            "ap%u0131_key=blt2",
            // Escapes deeper than any backend decodes: refused whatever they spell.
            "x%252525252525252541=1",
        ] {
            assert_eq!(check_with(bad, "blt1", None), Err(AMBIGUOUS), "{bad}");
        }
        // Characters other than ASCII read as any letters, or none: as dropped, and as
        // transliterators read them (anyascii reads `branχ` as `branch`, unidecode and
        // anyascii `api_קey` as `api_key`; the twenty-first outside probe).
        for bad in
            ["api\u{e9}key=blt2", "bran\u{3c7}=x", "api_%D7%A7ey=blt2", "branc%D7%97=x", "\u{5d0}=1", "\u{ff42}ranch=x"]
        {
            assert_eq!(check_with(bad, "blt1", None), Err(AMBIGUOUS), "{bad}");
        }
        assert!(check_with("caf\u{e9}=1&stra\u{df}e=1&\u{43c}\u{438}\u{440}_id=1", "blt1", None).is_ok());
        // A path's first part (qs with `allowDots` reads `branch.x` as `branch`).
        // And its other parts (ASP.NET's model binding reads `query.branch` as the
        // `Branch` of a parameter named `query`: the twenty-second outside probe); a key
        // naming two of them is refused whatever its value.
        for bad in [
            "branch.x=development",
            "api_key.x=blt2",
            "branch\u{ff0e}x=development",
            "_method.x=DELETE",
            "query.branch=development",
            "x[branch]=development",
            "x__branch=development",
            "x:branch=development",
            "api_key[branch]=blt1",
        ] {
            assert_eq!(check_with(bad, "blt1", None), Err(AMBIGUOUS), "{bad}");
        }
        // Escapes that decode to nothing looked for, or do not decode at all.
        assert!(check_with("q%2541=1&100%25=x&caf%u00e9=1&50%=1&%uZZZZ=1&%u12=1", "blt1", None).is_ok());
    }

    #[test]
    fn a_query_decoded_again_before_splitting_is_checked_too() {
        for bad in [
            "a=1%26branch%3Ddevelopment",
            "a=1%26api_key%3Dblt2",
            "a=1%3Bapi_key%3Dblt2",
            "a=1%2526api_key%253Dblt2",
            "a=1%u0026authtoken%u003Dx",
            "a=1%26_method%3DDELETE",
            "x%26api_key%3Dblt2=1",
            "api_key=blt1&a=%26api_key%3Dblt1",
            "a=%2525252525252541",
        ] {
            assert_eq!(check_with(bad, "blt1", None), Err(AMBIGUOUS), "{bad}");
        }
        for good in ["query=%7B%22title%22%3A%22a%26b%22%7D", "a=%25&q=100%25", "a=1%26api_key%3Dblt1", "x=%2541"] {
            assert!(check_with(good, "blt1", None).is_ok(), "{good}");
        }
        let named = |q: &'static str| named_branches(Some(q)).map(|n| n.map(|b| b.into_owned()));
        assert_eq!(named("base_branch=a&compare_branch=b&x=1%26compare_branch%3Dc"), Err(AMBIGUOUS));
        assert_eq!(named("x=%26base_branch%3Da"), Err(AMBIGUOUS));
        // The same branch named twice in the second reading: repeated, as in the first.
        assert_eq!(named("base_branch=a&x=%26base_branch%3Da"), Err(AMBIGUOUS));
        assert_eq!(named("base_branch=a&x=1%262").unwrap(), ["a", "main"]);
    }

    /// Whatever a letter of a name is replaced with, or whatever is put between its
    /// letters, if it is not ASCII the key still reads as a name: no character's reading
    /// is left to a table.
    #[test]
    fn other_than_ascii_never_hides_a_name() {
        for (name, _) in NAMES {
            let name = std::str::from_utf8(name).unwrap();
            for at in 0..name.len() {
                for other in ['\u{e9}', '\u{5e7}', '\u{430}', '\u{4e2d}', '\u{ad}', '\u{ff41}'] {
                    let replaced: String =
                        name.chars().enumerate().map(|(i, c)| if i == at { other } else { c }).collect();
                    let inserted = format!("{}{other}{}", &name[..at], &name[at..]);
                    for key in [replaced, inserted] {
                        assert_ne!(param(&key), Param::Other, "{key}");
                    }
                }
            }
        }
    }

    #[test]
    fn cookies_may_not_name_what_the_query_may_not() {
        let cookies = |values: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(COOKIE, HeaderValue::from_bytes(v.as_bytes()).unwrap());
            }
            check_cookies(&headers)
        };
        let refused = Err(GatewayError::BadRequest(BadRequest::AmbiguousCookie));
        assert!(cookies(&[]).is_ok());
        assert!(cookies(&["session=abc; theme=dark", "lang=en"]).is_ok());
        for bad in [
            "branch=main",
            "a=1; Api-Key=blt1",
            "a=1, authtoken=x",
            "a=1;_method=DELETE",
            "compare_branch=dev",
            "ap%u0069_key=x",
            "branch[]=x",
            "apı_key=x",
            // Letters transliterators read as the name's (the twenty-first outside
            // probe), escaped or raw, and a path's first part.
            "api_%D7%A7ey=blt0",
            "branc%D7%97=secret",
            "branc\u{5d7}=secret",
            "branch.x=secret",
        ] {
            assert_eq!(cookies(&["theme=dark", bad]), refused, "{bad}");
        }
    }

    #[test]
    fn a_body_is_no_form_and_its_type_is_stated_once_plainly() {
        let check = |method, has_body, fields: &[(&'static str, &'static [u8])]| {
            let mut request = http::Request::builder().method(method).uri("/v3/assets");
            for (k, v) in fields {
                request = request.header(*k, *v);
            }
            check_body_type(&request.body(()).unwrap().into_parts().0, has_body)
        };
        let refused = Err(GatewayError::UnsupportedBodyType);
        let json: (&str, &[u8]) = ("content-type", b"Application/JSON ;charset=utf-8");
        for good in [&b"Application/JSON ;charset=utf-8"[..], b"multipart/form-data; boundary=----x", b"image/png"] {
            assert!(check("POST", true, &[("content-type", good)]).is_ok(), "{}", String::from_utf8_lossy(good));
        }
        // No type: left to the handler, which refuses the body once it shows a byte.
        assert!(check("POST", true, &[]).is_ok() && check("DELETE", false, &[]).is_ok());
        let form: (&str, &[u8]) = ("content-type", b"application/x-www-form-urlencoded");
        assert!(check("POST", false, &[]).is_ok() && check("POST", false, &[form]).is_ok());
        for bad in [
            &b"application/x-www-form-urlencoded"[..],
            b"Application/X-WWW-Form-Urlencoded ; charset=utf-8",
            b"application/x-www-form-urlencodedz",
            b"application/x-www-form-urlencoded-foo",
            b"application/x-www-form-urlencoded,application/json",
            b"application/json, application/x-www-form-urlencoded",
            b"application/json\xa0",
            b"\xa0application/x-www-form-urlencoded",
            b"",
            b";",
        ] {
            assert_eq!(check("PUT", true, &[("content-type", bad)]), refused, "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(check("POST", true, &[json, json]), refused);
        // Another spelling of the field, with or without a body.
        assert_eq!(check("GET", false, &[("content_type", b"application/x-www-form-urlencoded")]), refused);
        assert_eq!(check("POST", true, &[json, ("Content_Type", b"application/json")]), refused);
    }

    #[test]
    fn a_compare_or_merge_names_two_branches_once_each_main_by_default() {
        let named = |q: &'static str| named_branches(Some(q)).map(|n| n.map(|b| b.into_owned()));
        assert_eq!(named("base_branch=main&compare_branch=development").unwrap(), ["main", "development"]);
        assert_eq!(named("compare_branch=dev").unwrap(), ["main", "dev"]);
        assert_eq!(named_branches(None).unwrap(), ["main", "main"]);
        assert_eq!(named("Base-Branch=a;[compare_branch]=b").unwrap(), ["a", "b"]);
        assert_eq!(named("ba\u{17f}e_branch=a&compare%5Fbranch=b").unwrap(), ["a", "b"]);
        assert_eq!(named("base_branch=%6Dain").unwrap(), ["main", "main"]);
        for bad in ["base_branch=a&base_branch=a", "compare_branch=a&compareBranch=b", "base_branch[]=a&base_branch=b"]
        {
            assert_eq!(named(bad), Err(AMBIGUOUS), "{bad}");
        }
        for key in [
            "base_branch",
            "Compare-Branch",
            "BA\u{17f}E_BRANCH",
            "[compare_branch]",
            "x.compare_branch",
            "q[base_branch]",
        ] {
            assert!(names_branch_pair(key), "{key}");
        }
        assert!(may_name_branch_pair("base_branch.compare_branch") && !names_branch_pair("base_branch.compare_branch"));
        assert_eq!(named("base_branch=main&compare_branch=main&x.compare_branch=secret"), Err(AMBIGUOUS));
        // Hidden by a leading NUL (read whole, it is a separator) or an invisible
        // character in the first part of a path (the probe of the 7th of December).
        for hidden in ["%00base_branch=development", "ba%C2%ADse_branch.x=development", "%00compare_branch=d"] {
            let query = format!("base_branch=main&compare_branch=main&{hidden}");
            assert_eq!(named_branches(Some(&query)).map(|n| n.map(|b| b.into_owned())), Err(AMBIGUOUS), "{hidden}");
        }
        assert!(!names_branch_pair("branch") && !names_branch_pair("base_branches"));
        // Other requests may carry them (they mean nothing there) without a refusal.
        assert!(check_with("base_branch=x&base_branch=y", "blt1", None).is_ok());
    }

    /// The decoder's reading of a query, as `pairs` took it before plain queries were
    /// split without it.
    fn decoded(query: &str) -> Vec<(Cow<'_, str>, Cow<'_, str>)> {
        query.split(['&', ';']).flat_map(|piece| form_urlencoded::parse(piece.as_bytes())).collect()
    }

    proptest::proptest! {
        /// A plain query's own slices are exactly the decoder's pairs (empty pieces,
        /// keys without `=`, values holding `=`), and any other query is decoded.
        #[test]
        fn plain_queries_split_as_the_decoder_reads_them(query in "[a-zA-Z0-9_.~&=+%;\\[\\] -]{0,24}") {
            proptest::prop_assert_eq!(pairs(&query).collect::<Vec<_>>(), decoded(&query));
            let plain = query.bytes().all(is_plain);
            proptest::prop_assert_eq!(matches!(pairs(&query), Pairs::Plain(_)), plain);
        }
    }

    #[test]
    fn plain_and_decoded_queries_are_checked_alike() {
        assert!(check_with("locale=en-us&&include_count=true&branch=main", "blt1", None).is_ok());
        assert!(check_with("branch&locale=en", "blt1", None).is_err(), "an empty branch is not main");
        assert!(check_with("branch=main&branch=main", "blt1", None).is_err());
        assert!(check_with("api_key=blt1=x", "blt1", None).is_err());
        assert!(check_with("API-KEY=blt2", "blt1", None).is_err());
        assert!(check_with("api%5Fkey=blt2", "blt1", None).is_err());
        assert!(check_with("x=1;branch=dev", "blt1", None).is_err());
        assert!(check_with("bran+ch=dev", "blt1", None).is_err());
    }
}

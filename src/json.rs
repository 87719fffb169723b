//! Strict JSON: what the gateway parses to decide must have one reading.
//!
//! `serde_json` keeps the last of two equal keys; other parsers keep the first, and a
//! JavaScript backend copying a body with `Object.assign` treats `__proto__` as the
//! prototype. A body with either could be read one way by the gateway and another by
//! the backend, so [`parse_strict`] reports them (with their paths from the root).

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use std::cell::RefCell;
use std::fmt;

/// Why a body was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonError {
    /// Not JSON (or nested deeper than serde_json's limit of 128).
    Malformed,
    /// JSON with keys given more than once, or `__proto__` keys (their paths).
    Ambiguous { repeated: Vec<String>, proto: Vec<String> },
}

/// Whether the request's body is JSON as the gateway reads it: declared so (see
/// [`typed_json`]) and sent as it is (see [`sent_as_is`]).
pub fn declares_json(headers: &http::HeaderMap) -> bool {
    typed_json(headers) && sent_as_is(headers)
}

/// Whether the request carries exactly one `Content-Type`, with the media type
/// `application/json` (in any case; RFC 9110 section 8.3.1). Parameters may follow, but
/// a `charset` other than UTF-8 (in any spelling of the parameter) is refused: JSON is
/// UTF-8 (RFC 8259 section 8.1) and the parser reads it as such, so a body declared
/// otherwise would be read as something else.
fn typed_json(headers: &http::HeaderMap) -> bool {
    let mut values = headers.get_all(http::header::CONTENT_TYPE).iter();
    let (Some(value), None) = (values.next(), values.next()) else {
        return false;
    };
    let Ok(text) = value.to_str() else {
        return false;
    };
    let mut parts = text.split(';');
    let media_type = parts.next().unwrap_or_default().trim();
    media_type.eq_ignore_ascii_case("application/json")
        && parts.all(|param| match param.split_once('=') {
            // RFC 2231's `charset*` and `charset*0` name the charset too (Werkzeug and
            // Python's `email` read them).
            Some((name, value)) if name.trim().split('*').next().is_some_and(|n| n.eq_ignore_ascii_case("charset")) => {
                // `utf8` is UTF-8's other name (the WHATWG Encoding Standard's labels).
                let charset = value.trim().trim_matches('"');
                charset.eq_ignore_ascii_case("utf-8") || charset.eq_ignore_ascii_case("utf8")
            }
            Some((name, _)) => !name.trim().is_empty(),
            None => param.trim().is_empty(),
        })
}

/// Whether a body is sent as it is: no content coding but `identity`, in any spelling of
/// the field (CGI, WSGI and Rack read `Content_Encoding` as `Content-Encoding`). A rule
/// reads the bytes sent; a backend that undoes a coding (Express's `body-parser`,
/// ASP.NET's request decompression) would read other bytes.
fn sent_as_is(headers: &http::HeaderMap) -> bool {
    headers.iter().all(|(name, value)| {
        !crate::field_names::folded_eq(name.as_str().as_bytes(), b"content-encoding")
            || value.as_bytes().split(|&b| b == b',').all(|c| c.trim_ascii().eq_ignore_ascii_case(b"identity"))
    })
}

/// Parses a body like `serde_json::from_slice`, refusing what has two readings.
pub fn parse_strict(body: &[u8]) -> Result<Value, JsonError> {
    let found = RefCell::new(Found::default());
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Strict { path: Path::Root, found: &found }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|_| JsonError::Malformed)?;
    let Found { repeated, proto } = found.into_inner();
    if repeated.is_empty() && proto.is_empty() {
        Ok(value)
    } else {
        Err(JsonError::Ambiguous { repeated, proto })
    }
}

/// The seed and visitor of [`parse_strict`]: builds the value at `path`, recording the
/// path of every repeated or `__proto__` key (parsing goes on, so every one is reported
/// and a syntax error later in the body is still `Malformed`).
struct Strict<'r> {
    path: Path<'r>,
    found: &'r RefCell<Found>,
}

/// Where a value sits: a chain through its parents' stack frames, so that a key costs
/// no text of its own until it is one to report (`a.b`, `l[0].__proto__`).
#[derive(Clone, Copy)]
enum Path<'p> {
    Root,
    Key(&'p Path<'p>, &'p str),
    Index(&'p Path<'p>, usize),
}

impl Path<'_> {
    fn text(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    fn write(&self, out: &mut String) {
        match self {
            Path::Root => {}
            Path::Key(parent, key) => {
                parent.write(out);
                push_key(out, key);
            }
            Path::Index(parent, i) => {
                parent.write(out);
                out.push('[');
                out.push_str(itoa::Buffer::new().format(*i));
                out.push(']');
            }
        }
    }
}

/// The most characters of a client's key that a field path shows.
const SHOWN_KEY_CHARS: usize = 64;

/// The most characters of a whole field path an answer shows (see [`shorten_path`]).
const SHOWN_PATH_CHARS: usize = 200;

/// The most repeated or `__proto__` keys [`parse_strict`] records: enough to show a
/// client what to fix, while a body of thousands of them, deep in long keys, cannot
/// make an answer (or the memory building it) hundreds of times its own size.
const MAX_FOUND: usize = 20;

/// Appends a client's object key to a field path (`token.name`, `scope[0].acl`): after a
/// dot when it is a plain name (ASCII letters, digits, `_`, `-`; no dot at the start of
/// a path), else quoted as a JSON string in brackets (`token["a.b"]`, `token[""]`), so
/// that a key holding a dot or a bracket, or none at all, reads as one key and never as
/// a nested one or an index. In the quotes every character outside printable ASCII is
/// escaped (`\u200b`): an invisible or reordering one would make two keys look alike.
/// A run shaped like a secret is shown as `[secret]` (no answer shows one, DESIGN.md
/// section 5), in quotes since the marker holds brackets; a key longer than
/// [`SHOWN_KEY_CHARS`] is cut there, after the masking (so no cut leaves part of a
/// secret), and the cut marked with a raw `…` (inside the quotes, where every other
/// such character is escaped).
pub fn push_key(out: &mut String, key: &str) {
    let masked = crate::pipeline::auth::without_secrets(key);
    let (shown, cut) = match masked.char_indices().nth(SHOWN_KEY_CHARS) {
        Some((at, _)) => (&masked[..at], true),
        None => (&masked[..], false),
    };
    let plain = matches!(masked, std::borrow::Cow::Borrowed(_))
        && !key.is_empty()
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if plain {
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(shown);
    } else {
        out.push_str("[\"");
        escape_into(out, shown);
    }
    if cut {
        out.push('…');
    }
    if !plain {
        out.push_str("\"]");
    }
}

/// `text` as the inside of a JSON string, with every character outside printable
/// ASCII as `\uXXXX` (UTF-16, as JSON escapes them).
fn escape_into(out: &mut String, text: &str) {
    use std::fmt::Write as _;
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
}

/// What marks the levels [`shorten_path`] leaves out: never in a path otherwise (a
/// key's own cut is a `…` with no space before it: a plain key holds none, and in a
/// quoted one every character outside printable ASCII is escaped).
const PATH_CUT: &str = " … ";

/// A field path of at most [`SHOWN_PATH_CHARS`] characters: a longer one (deep in long
/// keys) keeps its start and its end, the key at fault, around [`PATH_CUT`].
pub fn shorten_path(path: &str) -> std::borrow::Cow<'_, str> {
    let count = path.chars().count();
    if count <= SHOWN_PATH_CHARS {
        return std::borrow::Cow::Borrowed(path);
    }
    let keep = (SHOWN_PATH_CHARS - PATH_CUT.chars().count()) / 2;
    let head: String = path.chars().take(keep).collect();
    let tail: String = path.chars().skip(count - keep).collect();
    std::borrow::Cow::Owned(format!("{head}{PATH_CUT}{tail}"))
}

#[derive(Default)]
struct Found {
    repeated: Vec<String>,
    proto: Vec<String>,
}

impl Found {
    /// Records `path` in the list `which` picks, unless [`MAX_FOUND`] are recorded.
    fn record(&mut self, which: fn(&mut Found) -> &mut Vec<String>, path: &Path<'_>) {
        if self.repeated.len() + self.proto.len() < MAX_FOUND {
            which(self).push(path.text());
        }
    }
}

impl<'de> DeserializeSeed<'de> for Strict<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Strict<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::Number(n.into()))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        // The parser yields only finite numbers; null is serde_json's own answer otherwise.
        Ok(Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            let at = Strict { path: Path::Index(&self.path, items.len()), found: self.found };
            match seq.next_element_seed(at)? {
                Some(item) => items.push(item),
                None => return Ok(Value::Array(items)),
            }
        }
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut obj = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let path = Path::Key(&self.path, &key);
            let value = map.next_value_seed(Strict { path, found: self.found })?;
            if key == "__proto__" {
                self.found.borrow_mut().record(|found| &mut found.proto, &path);
            } else if obj.contains_key(&key) {
                self.found.borrow_mut().record(|found| &mut found.repeated, &path);
            } else {
                obj.insert(key, value);
            }
        }
        Ok(Value::Object(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&'static str]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for v in values {
            h.append(http::header::CONTENT_TYPE, http::HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn json_content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
            "application/json; charset=UTF8",
            "application/json ; foo=bar",
            "application/json;",
        ] {
            assert!(declares_json(&headers(&[ok])), "{ok}");
        }
        for refused in [
            "text/plain",
            "application/jsonx",
            "application/json-patch+json",
            "application/x-www-form-urlencoded",
            "application/json; charset=latin1",
            "application/json; charset*=utf-7",
            "application/json; CHARSET*0=utf-7",
            "application/json; charset*=utf-8''utf-8",
            "application/json; nonsense",
            "",
        ] {
            assert!(!declares_json(&headers(&[refused])), "{refused}");
        }
        assert!(!declares_json(&headers(&[])), "missing");
        assert!(!declares_json(&headers(&["application/json", "text/plain"])), "two values");
    }

    #[test]
    fn repeated_and_proto_keys_are_found_at_any_depth() {
        assert!(parse_strict(br#"{"a":[{"b":1}],"c":null}"#).is_ok());
        let err = parse_strict(br#"{"a":{"b":1,"b":2},"l":[{"__proto__":{}}]}"#).unwrap_err();
        assert_eq!(err, JsonError::Ambiguous { repeated: vec!["a.b".into()], proto: vec!["l[0].__proto__".into()] });
        assert_eq!(parse_strict(b"{"), Err(JsonError::Malformed));
    }

    /// Paths name the key from the root: dots between plain keys, indexes in brackets,
    /// any other key (empty, or holding a dot, a bracket, a quote) quoted in brackets.
    #[test]
    fn paths_read_from_the_root() {
        let body = br#"[{"a":[[{"x":1,"x":2}]],"":{"y":1,"y":2}},{"":{"":{"z":1,"z":2,"__proto__":0}}}]"#;
        let err = parse_strict(body).unwrap_err();
        let repeated = vec!["[0].a[0][0].x".to_string(), r#"[0][""].y"#.into(), r#"[1][""][""].z"#.into()];
        assert_eq!(err, JsonError::Ambiguous { repeated, proto: vec![r#"[1][""][""].__proto__"#.into()] });
        let err = parse_strict(br#"{"":{"":{"k":1,"k":2}},"b":{"b":{"b":0,"b":0}}}"#).unwrap_err();
        assert_eq!(err, JsonError::Ambiguous { repeated: vec![r#"[""][""].k"#.into(), "b.b.b".into()], proto: vec![] });
        // A key with a dot or brackets is one key, not a path.
        let err = parse_strict(br#"{"a.b":{"x[0]":1,"x[0]":2},"a":{"b":{"x":1,"x":2}}}"#).unwrap_err();
        let repeated = vec![r#"["a.b"]["x[0]"]"#.to_string(), "a.b.x".into()];
        assert_eq!(err, JsonError::Ambiguous { repeated, proto: vec![] });
    }

    /// Nesting to 127 levels parses; deeper is malformed (serde_json's limit, which
    /// docs/tokens.md states), as is a number no 64-bit float holds.
    #[test]
    fn nesting_deeper_than_127_levels_is_malformed() {
        for (n, ok) in [(127, true), (128, false)] {
            let arrays = format!("{}{}", "[".repeat(n), "]".repeat(n));
            let objects = format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
            assert_eq!(parse_strict(arrays.as_bytes()).is_ok(), ok, "{n} arrays");
            assert_eq!(parse_strict(objects.as_bytes()).is_ok(), ok, "{n} objects");
        }
        // A number beyond a 64-bit float's range is malformed too (docs/tokens.md).
        assert_eq!(parse_strict(b"[1e400]"), Err(JsonError::Malformed));
        assert_eq!(parse_strict(format!("[{}]", "9".repeat(5000)).as_bytes()), Err(JsonError::Malformed));
        assert!(parse_strict(b"[1e300, 18446744073709551616]").is_ok());
    }

    /// A key is shown whole up to 64 characters, cut and marked after; a secret-shaped
    /// run is masked before the cut, so none is left in part; quotes and control
    /// characters are escaped as in JSON.
    #[test]
    fn keys_in_paths_are_bounded_masked_and_quoted() {
        let path = |parent: &str, key: &str| {
            let mut out = parent.to_owned();
            push_key(&mut out, key);
            out
        };
        assert_eq!(path("token", "name_2-x"), "token.name_2-x");
        assert_eq!(path("", "name"), "name");
        assert_eq!(path("token", ""), r#"token[""]"#);
        assert_eq!(path("token", "a\"b\n"), r#"token["a\"b\u000a"]"#);
        // Outside printable ASCII, escaped: an invisible or reordering character shows.
        assert_eq!(path("token", "é"), r#"token["\u00e9"]"#);
        assert_eq!(path("token", "a\u{200b}b\u{202e}c"), r#"token["a\u200bb\u202ec"]"#);
        assert_eq!(path("token", "😀"), r#"token["\ud83d\ude00"]"#);
        let long = "k".repeat(5000);
        assert_eq!(path("token", &long), format!("token.{}…", "k".repeat(64)));
        assert_eq!(path("token", &"é".repeat(100)), format!("token[\"{}…\"]", "\\u00e9".repeat(64)));
        // A secret's marker holds brackets: the key is quoted, never read as an index.
        let secret = "cs0123456789abcdef0123456789ABCDEF";
        assert_eq!(path("token", secret), r#"token["[secret]"]"#);
        // The secret straddles the 64th character: masked whole, then cut after it.
        let key = format!("{}{secret}{}", "x".repeat(50), "y".repeat(100));
        let shown = path("token", &key);
        assert_eq!(shown, format!("token[\"{}[secret]{}…\"]", "x".repeat(50), "y".repeat(6)));
        assert!(!shown.contains("0123"), "{shown}");
    }

    /// A long path keeps its start and its end; a short one is as it was.
    #[test]
    fn long_paths_are_shortened_in_the_middle() {
        assert_eq!(shorten_path("token.scope[0].acl"), "token.scope[0].acl");
        let long = format!("{}.end", "a".repeat(300));
        let short = shorten_path(&long);
        assert_eq!(short.chars().count(), 199);
        assert!(short.starts_with("aaaa") && short.ends_with("aaaa.end") && short.contains(" … "), "{short}");
        let wide = "é".repeat(300);
        assert_eq!(shorten_path(&wide).chars().count(), 199);
        // The levels left out are marked apart from a key's own cut, so two bodies that
        // differ in the levels left out never read as one with a key cut.
        let mut cut_key = String::from("token");
        push_key(&mut cut_key, &"K".repeat(70));
        assert!(cut_key.ends_with("K…") && !cut_key.contains(" … "), "{cut_key}");
    }

    /// At most `MAX_FOUND` repeated or `__proto__` keys are recorded, however many there are.
    #[test]
    fn the_keys_found_are_bounded() {
        let pairs: Vec<String> = (0..500).map(|i| format!(r#""k{i}":0,"k{i}":1,"__proto__":{i}"#)).collect();
        let body = format!("{{{}}}", pairs.join(","));
        let Err(JsonError::Ambiguous { repeated, proto }) = parse_strict(body.as_bytes()) else { panic!() };
        assert_eq!(repeated.len() + proto.len(), MAX_FOUND);
        assert_eq!(&repeated[..2], ["k0", "k1"]);
    }
}

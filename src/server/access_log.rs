//! The access line, one per request and on by default: written here, byte for byte as
//! tracing-subscriber's text or JSON formatter writes the same event, at a fraction of
//! the cost. Through `tracing`, each line went through a field visitor per value, the
//! `fmt` machinery for every piece and a check of every string before writing it: about
//! a fifth of a proxied request's instructions. Here a line is built in one pass into
//! the thread's buffer and handed to the log's writer thread as tracing-subscriber
//! hands it one.
//!
//! `RUST_LOG` still decides whether lines are written (the `stackgate::access` target
//! at `info`). Without [`install`] (the gateway embedded in a test or another program)
//! a line is an ordinary `tracing` event with the same fields in one message.

use std::cell::RefCell;
use std::fmt::{self, Display, Write as _};
use std::io::Write as _;
use std::sync::OnceLock;
use tracing_appender::non_blocking::NonBlocking;

/// The target lines are filtered by (`RUST_LOG=stackgate::access=off` turns them off).
pub const TARGET: &str = "stackgate::access";

/// Where lines go and in which format, set once at start.
struct Sink {
    json: bool,
    writer: NonBlocking,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sends access lines to `writer` (the log's writer thread, which the other log lines
/// also go to), as JSON or as text.
pub fn install(json: bool, writer: NonBlocking) {
    let _ = SINK.set(Sink { json, writer });
}

/// Whether access lines are written (`RUST_LOG`).
pub fn enabled() -> bool {
    tracing::enabled!(target: TARGET, tracing::Level::INFO)
}

/// One field's value, written as tracing-subscriber writes what the `tracing` macros
/// record for it: a string quoted (`Debug`), a `%` value bare (`Display`), a number.
pub enum Value<'a> {
    /// A string field (`name = value`): quoted in text.
    Str(&'a str),
    /// A displayed string (`name = %value`): bare in text.
    Bare(&'a str),
    /// A displayed value (`name = %value`).
    Shown(&'a dyn Display),
    Number(u64),
}

/// The most room each thread's line buffer keeps between lines.
const KEPT_ROOM: usize = 16 * 1024;

/// Writes one access line with `fields` in their order.
pub fn write(fields: &[(&'static str, Value<'_>)]) {
    let Some(sink) = SINK.get() else {
        let mut text = String::new();
        let _ = text_fields(&mut text, fields);
        tracing::info!(target: TARGET, "{text}");
        return;
    };
    thread_local! {
        static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    }
    LINE.with(|line| {
        let Ok(mut line) = line.try_borrow_mut() else { return };
        line.clear();
        let formatted = if sink.json { json_line(&mut line, fields) } else { text_line(&mut line, fields) };
        if formatted.is_ok() {
            // One `write` is one line for the writer thread (as the formatter's).
            let _ = tracing_subscriber::fmt::MakeWriter::make_writer(&sink.writer).write_all(line.as_bytes());
        }
        // A line with a long target is rare: its room is not kept for every later one.
        if line.capacity() > KEPT_ROOM {
            line.shrink_to(KEPT_ROOM);
        }
    });
}

/// `2026-12-06T03:44:26.220048Z  INFO stackgate::access: name="value" name=value ...`
fn text_line(out: &mut String, fields: &[(&'static str, Value<'_>)]) -> fmt::Result {
    write!(out, "{}", humantime::format_rfc3339_micros(std::time::SystemTime::now()))?;
    out.push_str("  INFO ");
    out.push_str(TARGET);
    out.push_str(": ");
    text_fields(out, fields)?;
    out.push('\n');
    Ok(())
}

/// The fields as `DefaultFields` writes them: a string in quotes, escaped as `Debug`
/// escapes it (printable ASCII other than `"` and `\` is written as it is).
fn text_fields(out: &mut String, fields: &[(&'static str, Value<'_>)]) -> fmt::Result {
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(name);
        out.push('=');
        match value {
            Value::Str(s) if crate::cli::log_format::plain(s) => {
                out.push('"');
                out.push_str(s);
                out.push('"');
            }
            Value::Str(s) => write!(out, "{s:?}")?,
            Value::Bare(s) => out.push_str(s),
            Value::Shown(v) => write!(out, "{v}")?,
            Value::Number(n) => out.push_str(itoa::Buffer::new().format(*n)),
        }
    }
    Ok(())
}

/// `{"timestamp":"...","level":"INFO","fields":{...},"target":"stackgate::access"}`, as
/// the JSON formatter writes it (a `%` value is a string; strings escaped by serde_json).
fn json_line(out: &mut String, fields: &[(&'static str, Value<'_>)]) -> fmt::Result {
    write!(
        out,
        "{{\"timestamp\":\"{}\",\"level\":\"INFO\",\"fields\":{{",
        humantime::format_rfc3339_micros(std::time::SystemTime::now())
    )?;
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        json_string(out, name)?;
        out.push(':');
        match value {
            Value::Str(s) | Value::Bare(s) => json_string(out, s)?,
            Value::Shown(v) => {
                let mut shown = String::new();
                write!(shown, "{v}")?;
                json_string(out, &shown)?;
            }
            Value::Number(n) => out.push_str(itoa::Buffer::new().format(*n)),
        }
    }
    out.push_str("},\"target\":\"");
    out.push_str(TARGET);
    out.push_str("\"}\n");
    Ok(())
}

/// `s` as a JSON string, escaped by serde_json (the JSON formatter's own escaping),
/// and beyond it every character that ends a line or turns text around for some reader
/// of a log (DEL, the C1 controls with NEL, U+2028 and U+2029, the bidirectional
/// controls with the Arabic letter mark, the byte-order mark), as `\uXXXX`: the line reads back as the same value,
/// but a tool that splits lines on Unicode's line ends, or a terminal showing it, sees
/// one line as it is (the fifty-second outside probe; the text format's `Debug`
/// escaping covers them already).
fn json_string(out: &mut String, s: &str) -> fmt::Result {
    if s.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\') {
        out.push('"');
        out.push_str(s);
        out.push('"');
        return Ok(());
    }
    let quoted = serde_json::to_string(s).map_err(|_| fmt::Error)?;
    for c in quoted.chars() {
        if hides_in_a_log(c) {
            write!(out, "\\u{:04x}", u32::from(c))?;
        } else {
            out.push(c);
        }
    }
    Ok(())
}

/// A character [`json_string`] escapes beyond serde_json.
fn hides_in_a_log(c: char) -> bool {
    matches!(c, '\u{7f}'..='\u{9f}' | '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::log_format::Captured;

    /// What the gateway's subscriber (as `cli` sets it up) writes for `emit`.
    fn theirs(json: bool, emit: impl Fn()) -> String {
        let out = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .with_timer(crate::cli::log_format::Rfc3339Micros);
        if json {
            tracing::subscriber::with_default(builder.json().finish(), emit);
        } else {
            let plain = builder.fmt_fields(crate::cli::log_format::PlainFields::default());
            tracing::subscriber::with_default(plain.finish(), emit);
        }
        out.text()
    }

    fn ours(json: bool, fields: &[(&'static str, Value<'_>)]) -> String {
        let mut line = String::new();
        let formatted = if json { json_line(&mut line, fields) } else { text_line(&mut line, fields) };
        assert!(formatted.is_ok());
        line
    }

    /// The line without its timestamp (27 characters from the first digit: the two
    /// lines were written moments apart).
    fn untimed(line: &str) -> String {
        let at = line.find(|c: char| c.is_ascii_digit()).unwrap_or(0);
        format!("{}{}", &line[..at], line.get(at + 27..).unwrap_or(""))
    }

    #[test]
    fn lines_read_as_the_tracing_formatters_lines() {
        let error = crate::error::GatewayError::BadGateway(crate::error::UpstreamFailure::Connect);
        let cases: [(&str, &str, &str, u64); 5] = [
            ("/v3/content_types/blog_post/entries", "GET", "-", 200),
            ("/v3/a\"b\\c", "PURGE", "", 0),
            ("/v3/tab\there/caf\u{e9}", "G\u{e9}T", "bell\x07", u64::MAX),
            ("[withheld: holds a secret's shape]", "GET", "line\nbreak", 431),
            ("", "", "-", 1),
        ];
        for json in [false, true] {
            for (i, (path, method, uid, n)) in cases.iter().enumerate() {
                let fields = [
                    ("request_id", Value::Str("4eb54629-000000408f8d")),
                    ("client", Value::Bare("::1")),
                    ("method", Value::Bare(method)),
                    ("path", Value::Str(path)),
                    ("token_uid", Value::Str(uid)),
                    ("status", Value::Number(*n)),
                    ("detail", if i % 2 == 0 { Value::Bare("-") } else { Value::Shown(&error) }),
                ];
                let expected = theirs(json, || {
                    let detail: &dyn Display = if i % 2 == 0 { &"-" } else { &error };
                    tracing::info!(target: TARGET, request_id = "4eb54629-000000408f8d", client = %"::1",
                        method = %method, path = *path, token_uid = *uid, status = *n, detail = %detail)
                });
                assert!(expected.contains("4eb54629"), "{expected}");
                assert_eq!(untimed(&ours(json, &fields)), untimed(&expected), "json {json}, case {i}");
            }
        }
    }

    /// Characters that end a line or turn text around for some readers are escaped in
    /// JSON lines, and read back as sent.
    #[test]
    fn json_lines_escape_what_would_split_or_turn_them() {
        let hidden = "/v3/a\u{2028}b\u{2029}c\u{85}d\u{202e}e\u{7f}f\u{feff}g\u{2066}h\u{200f}";
        let line = ours(true, &[("path", Value::Str(hidden)), ("method", Value::Bare("caf\u{e9}\n"))]);
        assert_eq!(line.lines().count(), 1, "{line}");
        for c in hidden.chars().filter(|c| !c.is_ascii_alphanumeric() && *c != '/') {
            assert!(!line.contains(c), "{c:?} raw in {line}");
        }
        let parsed: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(parsed["fields"]["path"], hidden);
        assert_eq!(parsed["fields"]["method"], "caf\u{e9}\n");
    }
}

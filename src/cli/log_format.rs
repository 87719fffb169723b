//! The log's formatting: tracing-subscriber's output, byte for byte, at less cost per
//! line (an access line is written for every request, on by default).
//!
//! - Fields ([`PlainFields`], text format): `DefaultFields` writes a string value through
//!   `str`'s `Debug`, which escapes it character by character, and an access line is
//!   mostly such values. A value that is printable ASCII without `"` or `\` reads the
//!   same quoted as escaped, so when all of an event's string values are like that the
//!   event is written here, each value quoted in one piece. Anything else (a value that
//!   needs escaping, a `message`, an error, `log.` or `r#` fields) goes to
//!   `DefaultFields` unchanged.
//! - Timestamps ([`Rfc3339Micros`], both formats): the `SystemTime` timer's RFC 3339
//!   form with microseconds, formatted by `humantime` instead of a `write!` per part.

use std::fmt;
use tracing::field::{Field, Visit};
use tracing_subscriber::field::RecordFields;
use tracing_subscriber::fmt::format::{DefaultFields, Writer};
use tracing_subscriber::fmt::time::FormatTime;
use tracing_subscriber::fmt::FormatFields;

/// UTC time as `2026-12-04T05:24:13.913738Z`, as tracing-subscriber's `SystemTime` timer
/// writes it.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rfc3339Micros;

impl FormatTime for Rfc3339Micros {
    fn format_time(&self, w: &mut Writer<'_>) -> fmt::Result {
        write!(w, "{}", humantime::format_rfc3339_micros(std::time::SystemTime::now()))
    }
}

/// The text format's field formatter (see the module docs).
#[derive(Debug, Default)]
pub struct PlainFields {
    fallback: DefaultFields,
}

impl<'writer> FormatFields<'writer> for PlainFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        let mut check = AllPlain(true);
        fields.record(&mut check);
        if !check.0 {
            return self.fallback.format_fields(writer, fields);
        }
        let mut out = Direct { writer, first: true, result: Ok(()) };
        fields.record(&mut out);
        out.result
    }
}

/// Whether an event's fields can all be written by [`Direct`].
struct AllPlain(bool);

impl Visit for AllPlain {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0 &= plain_name(field.name()) && plain(value);
    }

    fn record_error(&mut self, _: &Field, _: &(dyn std::error::Error + 'static)) {
        self.0 = false;
    }

    fn record_debug(&mut self, field: &Field, _: &dyn fmt::Debug) {
        self.0 &= plain_name(field.name());
    }
}

/// Printable ASCII without `"` or `\`: its `Debug` form is itself in quotes.
pub(crate) fn plain(value: &str) -> bool {
    value.bytes().all(|b| matches!(b, b' '..=b'~') && b != b'"' && b != b'\\')
}

/// Names `DefaultFields` writes as `name=value`: not the message (written bare and
/// sanitised), not `log.` metadata (skipped), not a raw identifier (`r#` stripped).
fn plain_name(name: &str) -> bool {
    name != "message" && !name.starts_with("log.") && !name.starts_with("r#")
}

/// Writes `name=value` pairs separated by spaces, as `DefaultFields` does.
struct Direct<'writer> {
    writer: Writer<'writer>,
    first: bool,
    result: fmt::Result,
}

impl Direct<'_> {
    /// ` name=` (no space before the first): then the value.
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::take(&mut self.first) {
            self.writer.write_str(" ")?;
        }
        self.writer.write_str(field.name())?;
        self.writer.write_str("=")
    }
}

impl Visit for Direct<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_ok() {
            // Checked plain by `AllPlain`: its `Debug` form is the value in quotes.
            self.result = self.name(field).and_then(|()| {
                self.writer.write_str("\"")?;
                self.writer.write_str(value)?;
                self.writer.write_str("\"")
            });
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| self.writer.write_str(itoa::Buffer::new().format(value)));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| self.writer.write_str(itoa::Buffer::new().format(value)));
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_ok() {
            self.result = self.name(field).and_then(|()| write!(self.writer, "{value:?}"));
        }
    }
}

/// A log writer that keeps what is written, for tests that compare log lines.
#[cfg(test)]
#[derive(Clone, Default)]
pub(crate) struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

#[cfg(test)]
impl Captured {
    /// What was written so far, as text.
    pub(crate) fn text(&self) -> String {
        let bytes = self.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }
}

#[cfg(test)]
impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::ErrorKind::Other)?.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The lines `emit` logs, through `PlainFields` or through `DefaultFields`.
    fn lines(plain: bool, emit: fn()) -> String {
        let out = Captured::default();
        let builder = tracing_subscriber::fmt().with_writer(out.clone()).with_ansi(false).without_time();
        if plain {
            tracing::subscriber::with_default(builder.fmt_fields(PlainFields::default()).finish(), emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        out.text()
    }

    #[test]
    fn writes_what_default_fields_writes() {
        let emits: [fn(); 6] = [
            // An access line: every value plain, so written directly.
            || {
                tracing::info!(target: "stackgate::access", request_id = "4eb54629-000000408f8d",
                    client = %std::net::IpAddr::from([127, 0, 0, 1]), method = %http::Method::GET,
                    path = "/v3/content_types/blog_post/entries", module = "entry", token_uid = "-",
                    status = 200u16, latency_us = 1234u64, delta = -5i64, ok = true, ratio = 0.5f64)
            },
            // Values that need escaping, and the empty string.
            || tracing::info!(path = "/v3/a\"b\\c", other = "tab\there", empty = "", bell = "\x07", utf8 = "café"),
            || tracing::warn!(error = %"refused", "a message with {} args", 2),
            || tracing::warn!("message only"),
            || {
                let e = std::io::Error::other("disk full");
                tracing::error!(error = &e as &(dyn std::error::Error + 'static), path = "/p")
            },
            || tracing::info!(r#type = "raw", n = 1u64),
        ];
        for (i, emit) in emits.into_iter().enumerate() {
            let (ours, theirs) = (lines(true, emit), lines(false, emit));
            assert!(!ours.is_empty(), "event {i} was logged");
            assert_eq!(ours, theirs, "event {i}");
        }
    }

    #[test]
    fn timestamps_read_as_the_system_time_timers() {
        let format = |timer: &dyn FormatTime| {
            let mut out = String::new();
            timer.format_time(&mut Writer::new(&mut out)).map(|()| out)
        };
        let ours = format(&Rfc3339Micros).unwrap_or_default();
        let theirs = format(&tracing_subscriber::fmt::time::SystemTime).unwrap_or_default();
        // `2026-12-04T05:24:13.913738Z`: the same shape, and the same instant give or take.
        assert_eq!(ours.len(), 27, "{ours}");
        let shape = |s: &str| s.bytes().map(|b| if b.is_ascii_digit() { b'0' } else { b }).collect::<Vec<u8>>();
        assert_eq!(shape(&ours), shape(&theirs), "{ours} {theirs}");
        let (a, b) = (humantime::parse_rfc3339(&ours), humantime::parse_rfc3339(&theirs));
        let apart = match (a, b) {
            (Ok(a), Ok(b)) => b.duration_since(a).unwrap_or_default(),
            other => panic!("{other:?}"),
        };
        assert!(apart < std::time::Duration::from_secs(1), "{ours} {theirs}");
    }
}

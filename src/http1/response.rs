//! Response heads as the client reads them: parsed once (`httparse`), the framing
//! decided by RFC 9112 section 6.3, the fields kept as one block for the server to
//! copy (see [`Fields`]).

use super::body::Chunk;
use super::common::{connection_options, framed_length, ConnectionOptions};
use crate::field_names::{is_framing, is_hop_by_hop, same_name};
use bytes::{Bytes, BytesMut};
use http::header::CONTENT_LENGTH;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};

/// The largest response head accepted from the backend.
pub const MAX_HEAD: usize = 64 * 1024;
/// The most response header fields accepted (an HTTP/2 backend's answer is held to
/// it too).
pub const MAX_RESPONSE_FIELDS: usize = 128;

/// A response head that is not one (or not one this client frames exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the backend closes the connection.
    Close,
}

/// A response's header fields as this client keeps them: not parsed into a header
/// map but as one block of `name: value\r\n` lines, names in lower case, with the
/// hop-by-hop fields (RFC 9110 section 7.6.1: they belong to the upstream
/// connection) and `Content-Length` (the writer frames the body itself) left out.
/// The HTTP/1.1 server copies the block into the client's response as it is, as
/// nginx copies a backend's fields; every other writer asks for a header map
/// ([`Fields::into_map`]). Names and values were validated by `httparse`, whose
/// rules are `http`'s: no byte that could end a line or split the message.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    block: Bytes,
    /// The `Content-Length` the backend stated (a HEAD answer repeats it).
    length: Option<u64>,
    has_date: bool,
    /// One of the fields is one the caller replaces with its own (see [`Conn::connect`]).
    replaced: bool,
}

impl Fields {
    /// The fields, each line ending in CRLF, ready to be copied into a response head.
    pub fn block(&self) -> &[u8] {
        &self.block
    }

    pub fn length(&self) -> Option<u64> {
        self.length
    }

    pub fn has_date(&self) -> bool {
        self.has_date
    }

    /// Notes which of the fields in `block` are `Date` or ones the caller replaces.
    fn flag(&mut self, block: &[u8], replaced: fn(&[u8]) -> bool) {
        for line in lines(block) {
            let name = line.split(|&b| b == b':').next().unwrap_or_default();
            self.has_date |= name == b"date";
            self.replaced |= replaced(name);
        }
    }

    /// Whether a field the caller replaces (request id, rate limits) is present.
    pub fn has_replaced(&self) -> bool {
        self.replaced
    }

    /// Adds the fields (and the stated `Content-Length`) to a header map; the values
    /// share the block. The map is sized once, for them and for `room` fields the
    /// caller adds next: grown as they came, it was rehashed on the way.
    pub fn into_map(self, headers: &mut HeaderMap, room: usize) {
        let lines = memchr::memchr_iter(b'\n', &self.block).count();
        // A hint only: never a panic over a size (a head has at most MAX_RESPONSE_FIELDS lines).
        let _ = headers.try_reserve(lines + usize::from(self.length.is_some()) + room);
        let mut rest = &self.block[..];
        while let Some(end) = memchr::memchr(b'\r', rest) {
            let (line, after) = rest.split_at(end);
            rest = after.get(2..).unwrap_or_default();
            let Some(colon) = memchr::memchr(b':', line) else { continue };
            let value = line.get(colon + 2..).unwrap_or_default();
            let name = HeaderName::from_bytes(&line[..colon]);
            let value = HeaderValue::from_maybe_shared(self.block.slice_ref(value));
            if let (Ok(name), Ok(value)) = (name, value) {
                headers.append(name, value);
            }
        }
        if let Some(n) = self.length {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// A parsed response head. Its hop-by-hop fields were read for framing and reuse and
/// left out of `fields`.
pub struct Head {
    pub(crate) resp: Response<()>,
    pub(super) fields: Fields,
    /// Bytes of the buffer the head took.
    pub(crate) len: usize,
    /// `Some` when a `Transfer-Encoding` was present: whether its final coding is chunked.
    pub(super) chunked: Option<bool>,
    /// The one `Content-Length` all fields agree on; the outer `None` when they disagree
    /// or one is not a number.
    pub(super) length: Option<Option<u64>>,
    /// `Connection: close`, or HTTP/1.0: the backend will not take another request.
    pub(super) close: bool,
}

/// Parses a buffered response head; `None` if incomplete. The fields are copied out
/// of the read buffer into `block` (the connection's, reused once the previous
/// response's fields are gone), so they do not pin the read buffer while the response
/// is written.
pub fn parse_head(
    buf: &BytesMut,
    block: &mut BytesMut,
    replaced: fn(&[u8]) -> bool,
) -> Result<Option<Head>, Malformed> {
    // Left uninitialised (4 KiB not written per response); httparse fills what it uses.
    let mut headers = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_RESPONSE_FIELDS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut parsed, buf, &mut headers)
    {
        // Bounded however the bytes arrived (a complete head can come in one read).
        Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
        Ok(httparse::Status::Complete(_)) => return Err(Malformed),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(Malformed),
    };
    // RFC 9110 section 15: a status is three digits from 100 to 599; `http` takes up
    // to 999, which no client knows how to read.
    let status = parsed.code.filter(|c| (100..600).contains(c)).and_then(|c| StatusCode::from_u16(c).ok());
    let status = status.ok_or(Malformed)?;
    let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
    // What the framing and connection fields say, before any field is dropped (a
    // `Connection` header could list `Content-Length` itself).
    let mut head = Head {
        resp: Response::new(()),
        fields: Fields::default(),
        len,
        chunked: None,
        length: Some(None),
        close: version == Version::HTTP_10,
    };
    // Names `Connection` lists beyond the usual ones: rare, so allocated only if present.
    let mut listed: Vec<&[u8]> = Vec::new();
    let mut options = ConnectionOptions::default();
    // One pass: each name is copied in lower case, read if it frames or manages the
    // connection, and kept unless it is hop-by-hop.
    let base = block.len();
    block.reserve(len);
    for h in parsed.headers.iter() {
        let start = block.len();
        block.extend_from_slice(h.name.as_bytes());
        block[start..].make_ascii_lowercase();
        let name = &block[start..];
        match name {
            b"connection" => connection_options(h.value, &mut options, |name| listed.push(name)),
            b"transfer-encoding" => {
                // Only `chunked`, once: the body is passed on de-chunked and re-framed, so
                // any other coding (`gzip, chunked`, a close-delimited `gzip`) would reach
                // the client without its label, as other bytes than the backend meant.
                if head.chunked.is_some() || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    block.truncate(base);
                    return Err(Malformed);
                }
                head.chunked = Some(true);
            }
            b"content-length" => head.length = head.length.and_then(|found| merge_length(found, h.value)),
            _ => {}
        }
        if is_hop_by_hop(name) || is_framing(name) {
            block.truncate(start);
            continue;
        }
        head.fields.has_date |= name == b"date";
        head.fields.replaced |= replaced(name);
        block.extend_from_slice(b": ");
        block.extend_from_slice(h.value);
        block.extend_from_slice(b"\r\n");
    }
    head.close |= options.close;
    let fields = &mut head.fields;
    if !listed.is_empty() {
        drop_listed(block, base, &listed);
        fields.has_date = false;
        fields.replaced = false;
        fields.flag(&block[base..], replaced);
    }
    fields.block = block.split().freeze();
    // With `Transfer-Encoding` the length is not what frames the body (RFC 9112
    // section 6.3): stating it to the client would make its writer frame by it. A 204
    // has no length to state (RFC 9110 section 8.6), and an h2 client refuses a stream
    // whose length its DATA does not match (see [`states_no_length`]).
    fields.length = head.length.flatten().filter(|_| head.chunked.is_none() && !states_no_length(status));
    *head.resp.status_mut() = status;
    *head.resp.version_mut() = version;
    Ok(Some(head))
}

/// Whether a backend's `Content-Length` is left out of an answer with this status, on
/// every path and for every client: a 204 has no length to state (RFC 9110 section
/// 8.6); a 304 may state the selected representation's, but the HTTP/1.1 writers (the
/// gateway's loop and hyper's) leave it out, so every client sees the same head.
pub fn states_no_length(status: StatusCode) -> bool {
    status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
}

/// Removes from the block (from `base`) the fields `Connection` listed: they concern
/// this hop only (RFC 9110, 7.6.1).
fn drop_listed(block: &mut BytesMut, base: usize, listed: &[&[u8]]) {
    let written = block.split_off(base);
    for line in lines(&written) {
        let name = line.split(|&b| b == b':').next().unwrap_or_default();
        if !listed.iter().any(|l| same_name(l, name)) {
            block.extend_from_slice(line);
            block.extend_from_slice(b"\r\n");
        }
    }
}

/// The block's `name: value` lines, without their CRLF.
fn lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    block.split(|&b| b == b'\n').filter_map(|line| line.strip_suffix(b"\r"))
}

/// Adds one `Content-Length` field (a list of values, all equal) to what earlier
/// fields said; `None` if it is not a number, disagrees, or is longer than any writer
/// frames ([`framed_length`]).
fn merge_length(mut found: Option<u64>, value: &[u8]) -> Option<Option<u64>> {
    for part in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
        let n = framed_length(part)?;
        if found.is_some_and(|f| f != n) {
            return None;
        }
        found = Some(n);
    }
    Some(found)
}

/// RFC 9112 section 6.3: how this response's body ends; `None` inside for no body.
/// An unusable `Content-Length` is a protocol error (the outer `None`), also where it
/// frames nothing (HEAD, 204, 304): a HEAD answers as its GET would, 502 for both.
pub fn framing(method: &Method, head: &Head) -> Option<Option<Framing>> {
    let status = head.resp.status();
    if head.chunked.is_none() && head.length.is_none() {
        return None;
    }
    if method == Method::HEAD || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Some(None);
    }
    if let Some(chunked) = head.chunked {
        // RFC 9112 section 6.1: Transfer-Encoding in an HTTP/1.0 message is faulty framing.
        if head.resp.version() == Version::HTTP_10 {
            return None;
        }
        return Some(Some(if chunked { Framing::Chunked(Chunk::Size) } else { Framing::Close }));
    }
    match head.length? {
        Some(0) => Some(None),
        Some(n) => Some(Some(Framing::Length(n))),
        None => Some(Some(Framing::Close)),
    }
}

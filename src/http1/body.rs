//! Message bodies on the wire, both directions: one writer (a length-delimited or
//! chunk-coded body after its head) and one chunked decoder.

use super::common::COALESCE;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use std::io::Write as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A chunk-size line or a trailer section longer than this is refused.
pub(crate) const MAX_CHUNK_LINE: usize = 4096;
pub(crate) const MAX_TRAILERS: usize = 16 * 1024;
/// The most fields a trailer section may have.
const MAX_TRAILER_FIELDS: usize = 128;

/// Why a body could not be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteError {
    /// The body being forwarded failed (its sender broke off).
    Source,
    /// The body failed before anything was written: what `out` held is still there,
    /// unsent, and the caller may answer otherwise.
    Unstarted,
    /// The connection failed.
    Io,
}

/// Streams `body` after the head already in `out`, chunk-coded when `chunked`: a
/// small body (or a small last frame) leaves in the same write as what precedes it,
/// and what has been taken goes out before waiting for more, so the peer gets the
/// data as it comes. What was written is flushed before waiting for the next frame
/// and at the end: a writer may hold bytes until flushed (a TLS stream keeps what the
/// socket did not take at once), and the peer would wait for them as long as nothing
/// else is written. Returns the bytes of body written.
pub(crate) async fn write_body<I, B>(
    io: &mut I,
    out: &mut Vec<u8>,
    body: &mut B,
    chunked: bool,
) -> Result<u64, WriteError>
where
    I: AsyncWrite + Unpin,
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    let mut sent: u64 = 0;
    let mut started = false;
    while !body.is_end_stream() {
        let Some(frame) = body.frame().await else { break };
        let failed = if started { WriteError::Source } else { WriteError::Unstarted };
        let Ok(data) = frame.map_err(|_| failed)?.into_data() else { continue };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if chunked {
            let _ = write!(out, "{:x}\r\n", data.len());
        }
        let mut wrote = false;
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            started = true;
            wrote = true;
            write_both(io, out, &data).await.map_err(|_| WriteError::Io)?;
            out.clear();
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        if !body.is_end_stream() && !out.is_empty() {
            started = true;
            wrote = true;
            io.write_all(out).await.map_err(|_| WriteError::Io)?;
            out.clear();
        }
        if wrote && !body.is_end_stream() {
            io.flush().await.map_err(|_| WriteError::Io)?;
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if !out.is_empty() {
        io.write_all(out).await.map_err(|_| WriteError::Io)?;
        out.clear();
    }
    io.flush().await.map_err(|_| WriteError::Io)?;
    Ok(sent)
}

/// Writes `first` then `second` as one `writev` where the connection takes both (a
/// head or chunk line before a large frame: one system call and, with TCP_NODELAY, no
/// small segment of its own), then whatever a partial write left.
async fn write_both<I: AsyncWrite + Unpin>(io: &mut I, first: &[u8], second: &[u8]) -> std::io::Result<()> {
    let (mut first, mut second) = (first, second);
    while !first.is_empty() {
        let n = io.write_vectored(&[std::io::IoSlice::new(first), std::io::IoSlice::new(second)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_first = n.min(first.len());
        first = &first[from_first..];
        second = second.get(n - from_first..).unwrap_or_default();
    }
    io.write_all(second).await
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// One step of the chunked decoder.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    Data(Bytes, Chunk),
    Progress(Chunk),
    End,
    NeedMore,
}

/// Decodes what `buf` holds of a chunked body from `state`, consuming it.
pub(crate) fn decode_chunk(buf: &mut BytesMut, state: Chunk) -> Result<Decoded, ()> {
    match state {
        // chunk-size = 1*HEXDIG: `httparse` reads a line without a digit as size 0.
        Chunk::Size if buf.first().is_some_and(|b| !b.is_ascii_hexdigit()) => Err(()),
        Chunk::Size => match httparse::parse_chunk_size(buf) {
            // `httparse` skips any byte in an extension, a bare LF too.
            Ok(httparse::Status::Complete((used, _)))
                if buf.get(..used.saturating_sub(2)).is_some_and(|line| line.contains(&b'\n')) =>
            {
                Err(())
            }
            Ok(httparse::Status::Complete((used, 0))) => {
                buf.advance(used);
                Ok(Decoded::Progress(Chunk::Trailers))
            }
            Ok(httparse::Status::Complete((used, size))) => {
                buf.advance(used);
                Ok(Decoded::Progress(Chunk::Data(size)))
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_CHUNK_LINE => Ok(Decoded::NeedMore),
            Ok(httparse::Status::Partial) | Err(_) => Err(()),
        },
        Chunk::Data(_) if buf.is_empty() => Ok(Decoded::NeedMore),
        Chunk::Data(remaining) => {
            let n = remaining.min(buf.len() as u64);
            let data = buf.split_to(n as usize).freeze();
            let next = if n == remaining { Chunk::DataEnd } else { Chunk::Data(remaining - n) };
            Ok(Decoded::Data(data, next))
        }
        Chunk::DataEnd => match buf.get(..2) {
            None => Ok(Decoded::NeedMore),
            Some(b"\r\n") => {
                buf.advance(2);
                Ok(Decoded::Progress(Chunk::Size))
            }
            Some(_) => Err(()),
        },
        // Trailer fields are dropped (as hyper does for HTTP/1); only their end matters.
        Chunk::Trailers => {
            if buf.starts_with(b"\r\n") {
                buf.advance(2);
                return Ok(Decoded::End);
            }
            match buf.windows(4).position(|w| w == b"\r\n\r\n") {
                // Bounded however the bytes arrived, and a section of CRLF-ended fields.
                Some(end) if end + 4 > MAX_TRAILERS || !valid_trailers(buf.get(..end + 4).unwrap_or_default()) => {
                    Err(())
                }
                Some(end) => {
                    buf.advance(end + 4);
                    Ok(Decoded::End)
                }
                None if buf.len() < MAX_TRAILERS => Ok(Decoded::NeedMore),
                None => Err(()),
            }
        }
    }
}

/// A trailer section (ending in its empty line) that is one: lines end in CRLF (no lone
/// CR or LF) and are header fields.
fn valid_trailers(section: &[u8]) -> bool {
    let crlf_only = section.iter().enumerate().all(|(i, &b)| match b {
        b'\r' => section.get(i + 1) == Some(&b'\n'),
        b'\n' => i > 0 && section.get(i - 1) == Some(&b'\r'),
        _ => true,
    });
    let mut fields = [httparse::EMPTY_HEADER; MAX_TRAILER_FIELDS];
    crlf_only && matches!(httparse::parse_headers(section, &mut fields), Ok(httparse::Status::Complete(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` to the decoder in pieces of `step` bytes; returns the data.
    fn decode_all(wire: &[u8], step: usize) -> Result<Vec<u8>, ()> {
        let (mut buf, mut state, mut out) = (BytesMut::new(), Chunk::Size, Vec::new());
        let mut pieces = wire.chunks(step);
        loop {
            match decode_chunk(&mut buf, state)? {
                Decoded::Data(d, next) => {
                    out.extend_from_slice(&d);
                    state = next;
                }
                Decoded::Progress(next) => state = next,
                Decoded::End => return if buf.is_empty() { Ok(out) } else { Err(()) },
                Decoded::NeedMore => buf.extend_from_slice(pieces.next().ok_or(())?),
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let wire = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-trailer: t\r\n\r\n";
        for step in [1, 2, 3, 7, wire.len()] {
            assert_eq!(decode_all(wire, step).unwrap(), b"helloabcdefghijklmnopqrstuvwxyz", "step {step}");
        }
        assert_eq!(decode_all(b"0\r\n\r\n", 1).unwrap(), b"");
        // (Chunk sizes without a digit, bare LFs in extensions and malformed trailers
        // are refused, as hyper refuses them: the differential fuzz target h1_client.)
        for bad in [
            &b"5\r\nhelloXX0\r\n\r\n"[..],
            b"zz\r\n",
            b"5\r\nhel",
            b"\r\n\r\n",
            b";x\r\n\r\n",
            b"5;a\nb\r\nhello\r\n0\r\n\r\n",
            b"0\r\ngarbage\r\n\r\n",
            b"0\r\nx: y\r\r\n\r\n",
        ] {
            assert!(decode_all(bad, 1).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long_size = vec![b'1'; MAX_CHUNK_LINE + 1];
        assert!(decode_all(&long_size, 64).is_err());
    }

    /// A body that yields its frames one poll at a time.
    struct Frames(std::collections::VecDeque<&'static [u8]>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            std::task::Poll::Ready(self.0.pop_front().map(|d| Ok(hyper::body::Frame::data(Bytes::from_static(d)))))
        }

        fn is_end_stream(&self) -> bool {
            self.0.is_empty()
        }
    }

    /// The writer's chunk coding is what the decoder reads.
    #[tokio::test]
    async fn written_chunks_decode_to_the_same_bytes() {
        let mut body = Frames([&b"ab"[..], b"", b"cdefgh", b"i"].into_iter().collect());
        let (mut wire, mut out) = (Vec::new(), b"HEAD\r\n\r\n".to_vec());
        let sent = write_body(&mut wire, &mut out, &mut body, true).await.unwrap();
        assert_eq!(sent, 9);
        let chunked = wire.strip_prefix(&b"HEAD\r\n\r\n"[..]).unwrap();
        assert_eq!(chunked, b"2\r\nab\r\n6\r\ncdefgh\r\n1\r\ni\r\n0\r\n\r\n");
        assert_eq!(decode_all(chunked, 3).unwrap(), b"abcdefghi");
    }

    /// A frame too large to coalesce leaves with what precedes it, whole and in order,
    /// however little each write takes (a peer reading slowly): over a duplex pipe
    /// that holds 1000 bytes, read as it fills.
    #[tokio::test]
    async fn a_large_frame_and_what_precedes_it_survive_partial_writes() {
        use tokio::io::AsyncReadExt;
        static LARGE: [u8; 3 * COALESCE] = [7; 3 * COALESCE];
        for chunked in [false, true] {
            let (mut near, mut far) = tokio::io::duplex(1000);
            let reading = tokio::spawn(async move {
                let mut all = Vec::new();
                far.read_to_end(&mut all).await.unwrap();
                all
            });
            let mut body = Frames([&b"head-of-body"[..], &LARGE[..], b"tail"].into_iter().collect());
            let mut out = b"HEAD\r\n\r\n".to_vec();
            let sent = write_body(&mut near, &mut out, &mut body, chunked).await.unwrap();
            drop(near);
            let wire = reading.await.unwrap();
            assert_eq!(sent, (12 + LARGE.len() + 4) as u64);
            let rest = wire.strip_prefix(&b"HEAD\r\n\r\n"[..]).unwrap();
            let data = if chunked { decode_all(rest, 4096).unwrap() } else { rest.to_vec() };
            let mut expected = b"head-of-body".to_vec();
            expected.extend_from_slice(&LARGE);
            expected.extend_from_slice(b"tail");
            assert!(data == expected, "chunked: {chunked}");
        }
    }
}

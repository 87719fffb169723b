//! The gateway's own HTTP/1.1 code, both directions, on one framing implementation
//! (the layout of Pingora's `protocols/http/v1`):
//! - [`server`]: the loop that serves the common bodiless request itself and hands
//!   everything else to hyper;
//! - [`client`]: the upstream connection of the direct path (`response`: its response
//!   heads and their framing);
//! - `body`: the one body writer and chunked decoder; `common`: header lines, the
//!   status line, `Connection` options and the `Date` value.
//!
//! Nothing here knows about tokens, stacks or the pipeline: the server calls a
//! service and writes what it returns; the client sends the fields its caller chose.

mod body;
pub mod client;
mod common;
pub(crate) use common::framed_length;
mod response;
pub mod server;

pub use body::Chunk;
pub(crate) use body::{decode_chunk, Decoded};
pub use response::{states_no_length, MAX_RESPONSE_FIELDS};

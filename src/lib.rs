//! stackgate: an API gateway that enforces Contentstack-style management tokens in
//! front of a Content Management API (CMA) backend.
//!
//! # Layout
//! The tree follows the request pipeline (DESIGN.md section 1):
//! - [`cma`]: the CMA's vocabulary (modules, access, rules), imported by every stage.
//! - [`config`]: the TOML file, compiled once into validated types.
//! - [`snapshot`]: the immutable state a request reads (stacks, tokens, upstream).
//! - [`pipeline`]: the synchronous stages, as plain functions over a snapshot:
//!   [`pipeline::normalize`], [`pipeline::classify`], [`pipeline::authenticate`],
//!   [`pipeline::authorize`], [`pipeline::inspect_body`].
//! - [`ratelimit`]: stage 6, charged after authorisation; [`rate_fields`]: the
//!   rate-limit response fields it reports.
//! - [`proxy`]: stage 7, forwarding (an HTTP/1.1 upstream connection per client
//!   connection over TCP or TLS, or an https backend's HTTP/2 connection) with streamed bodies.
//! - [`http1`]: the gateway's own HTTP/1.1 server loop and upstream client, on one
//!   framing implementation.
//! - [`field_names`]: the header-field names the gateway reads, strips or refuses,
//!   compared in every spelling.
//! - [`json`]: strict JSON parsing for everything the gateway decides on.
//! - [`error`]: the one mapping from failures to CMA error responses.
//! - [`gateway`]: the shared state (the one swappable snapshot) and how it changes:
//!   reload, committed token changes, other replicas' changes.
//! - [`server`]: listeners, connections, the outer handler that logs every request, and
//!   the admin listener with the token console.
//! - [`token`]: token records and scopes; [`clock`]: injectable time.
//! - [`demo`]: an embedded CMA-like backend for `stackgate demo` and tests.
//! - [`cli`]: the `stackgate` command.

pub mod cli;
pub mod clock;
pub mod cma;
pub mod config;
pub mod demo;
pub mod error;
pub mod field_names;
pub mod fuzzing;
pub mod gateway;
pub mod guard;
pub mod http1;
pub mod json;
pub mod notify;
pub mod pipeline;
pub mod proxy;
pub mod rate_fields;
pub mod ratelimit;
pub mod server;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod timer;
pub mod tls;
pub mod token;
pub mod token_api;
pub mod usage;

//! The properties the fuzz targets (`fuzz/`) check, kept here so CI replays the
//! committed corpora through the same code as ordinary tests (`tests/fuzz_corpus.rs`).
//! Each function panics only when a property is violated.

use crate::pipeline::{classify, inspect_body, normalize, Operation};
use http::{Method, Uri, Version};

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

/// A request target: normalize + classify never panic; an accepted path is canonical
/// (normalizing it again changes nothing) and holds none of the ambiguous forms.
pub fn check_target(data: &[u8]) {
    let Ok(uri) = Uri::try_from(data) else { return };
    let Ok(target) = normalize(&uri, Version::HTTP_11, &[]) else { return };
    let path: &str = &target.path;
    let reparsed = Uri::try_from(path).unwrap_or_default();
    let again = normalize(&reparsed, Version::HTTP_11, &[]);
    assert!(
        again.as_ref().is_ok_and(|t| t.path == path),
        "canonical path {path:?} did not survive a second normalization"
    );
    for bad in ["//", "/./", "/../", "\\", ";", "%2f", "%2F", "%2e", "%2E", "%5c", "%5C", "%25", "%00"] {
        assert!(!path.contains(bad), "canonical path {path:?} contains {bad:?}");
    }
    assert!(!path.ends_with("/.") && !path.ends_with("/..") && (path == "/" || !path.ends_with('/')), "{path:?}");
    assert!(path.is_ascii(), "{path:?}");
    for m in &METHODS {
        let _ = classify(m, path);
    }
}

/// A body for each body rule: never a panic.
pub fn check_body(data: &[u8]) {
    for (method, path) in [
        (Method::POST, "/v3/content_types/ct/entries/e/workflow"),
        (Method::POST, "/v3/workflows/publishing_rules"),
        (Method::PUT, "/v3/workflows/publishing_rules/x"),
    ] {
        if let Ok(op) = classify(&method, path) {
            let _: Operation = op;
            let _ = inspect_body(&op, data);
        }
    }
}

/// A config file: an error list or a config, never a panic.
pub fn check_config(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = crate::config::from_str(text);
    }
}

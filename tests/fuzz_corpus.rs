//! Replays the committed fuzz corpora (`fuzz/corpus/*`) through the same property
//! checks the fuzz targets run, as ordinary tests: no fuzzing in CI, but every input
//! the fuzzer ever kept (and every crash it found, once fixed) stays covered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn replay(target: &str, check: fn(&[u8])) {
    let dir = std::path::Path::new("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| check(&data));
        assert!(result.is_ok(), "{} fails its property check", path.display());
        n += 1;
    }
    assert!(n > 0, "empty corpus {}", dir.display());
    println!("{target}: {n} inputs replayed");
}

#[test]
fn normalize_classify_corpus() {
    replay("normalize_classify", stackgate::fuzzing::check_target);
}

#[test]
fn body_rules_corpus() {
    replay("body_rules", stackgate::fuzzing::check_body);
}

#[test]
fn config_parse_corpus() {
    replay("config_parse", stackgate::fuzzing::check_config);
}

#[test]
fn h1_server_corpus() {
    replay("h1_server", stackgate::fuzzing::check_h1_server);
}

#[test]
fn h1_client_corpus() {
    replay("h1_client", stackgate::fuzzing::check_h1_client);
}

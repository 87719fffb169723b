//! Arbitrary config files: an error list or a config, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stackgate::fuzzing::check_config(data);
});

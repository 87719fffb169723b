//! Arbitrary bodies through the body rules of DESIGN.md 1.3: never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stackgate::fuzzing::check_body(data);
});

//! Request targets -> normalize -> classify must never panic, and whatever normalize
//! accepts must be canonical (see `stackgate::fuzzing::check_target`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stackgate::fuzzing::check_target(data);
});

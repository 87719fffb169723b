//! Request byte streams -> the gateway's own HTTP/1.1 head parser (`http1::server::parse`)
//! and hyper's HTTP/1 server: every request the parser takes, hyper takes the same way,
//! with the same boundary (see `stackgate::fuzzing::check_h1_server`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stackgate::fuzzing::check_h1_server(data);
});

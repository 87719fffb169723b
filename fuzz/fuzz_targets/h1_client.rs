//! Backend response byte streams -> the gateway's own HTTP/1.1 client parsing and body
//! framing (`http1::client`) and hyper's HTTP/1 client: what the gateway accepts, hyper
//! accepts, with the same status and body (see `stackgate::fuzzing::check_h1_client`).
//! The first byte picks GET or HEAD and how the gateway's side is split into reads.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    stackgate::fuzzing::check_h1_client(data);
});

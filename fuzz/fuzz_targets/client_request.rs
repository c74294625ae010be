//! The client and admin APIs' request conversion and validation (first byte: which request).
//! The body is `virfed::kit::fuzzing::client_request`, which `tests/fuzz_seeds.rs` also runs on the
//! committed seeds (`fuzz/seeds/client_request/`) on stable.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    virfed::kit::fuzzing::client_request(bytes);
});

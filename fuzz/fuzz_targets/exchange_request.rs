//! A peer's `Exchange` request off the wire: protobuf decode, then item validation.
//! The body is `virfed::kit::fuzzing::exchange_request`, which `tests/fuzz_seeds.rs` also runs on the
//! committed seeds (`fuzz/seeds/exchange_request/`) on stable.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    virfed::kit::fuzzing::exchange_request(bytes);
});

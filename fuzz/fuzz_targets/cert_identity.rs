//! Certificate identity parsing: any DER gives an identity or a refusal, never a panic.
//! The body is `virfed::kit::fuzzing::cert_identity`, which `tests/fuzz_seeds.rs` also runs on the
//! committed seeds (`fuzz/seeds/cert_identity/`) on stable.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    virfed::kit::fuzzing::cert_identity(bytes);
});

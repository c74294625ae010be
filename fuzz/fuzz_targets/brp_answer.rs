//! The BRP's answer body: parents or an error, no error quoting the answer.
//! The body is `virfed::kit::fuzzing::brp_answer`, which `tests/fuzz_seeds.rs` also runs on the
//! committed seeds (`fuzz/seeds/brp_answer/`) on stable.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    virfed::kit::fuzzing::brp_answer(bytes);
});

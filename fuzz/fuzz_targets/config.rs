//! The node config parser: any bytes give a config or an error naming what is wrong.
//! The body is `virfed::kit::fuzzing::config`, which `tests/fuzz_seeds.rs` also runs on the
//! committed seeds (`fuzz/seeds/config/`) on stable.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    virfed::kit::fuzzing::config(bytes);
});

//! The backup reader: `virfed store restore` of any file gives a store or an error.
//! The body is `virfed::kit::fuzzing::backup_reader`, which `tests/fuzz_seeds.rs` also runs on the
//! committed seeds (`fuzz/seeds/backup_reader/`) on stable.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    virfed::kit::fuzzing::backup_reader(bytes);
});

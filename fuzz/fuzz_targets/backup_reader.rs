//! The backup reader: `virfed store restore` of any file into an empty directory gives a
//! restored store or an error naming what is wrong, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("backup.vfb");
    std::fs::write(&file, bytes).expect("writing the input");
    let _ = virfed::store::backup::restore(&dir.path().join("store"), &file, false);
});

//! The node config parser: any text gives a config or an error, never a panic.
#![no_main]
libfuzzer_sys::fuzz_target!(|text: &str| {
    let _ = virfed::config::Config::parse(text);
});
